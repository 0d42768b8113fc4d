//! The parsers never panic, whatever the input, and accept what they print.
#![allow(clippy::unwrap_used, missing_docs)]

use overlay_core::parse::{
    Cidr, InterfaceName, LabelSelector, Zone, parse_ip, parse_ip_with_prefix,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsers_never_panic(s in "\\PC{0,40}") {
        let _ = Cidr::parse("f", &s);
        let _ = parse_ip("f", &s);
        let _ = parse_ip_with_prefix("f", &s);
        let _ = InterfaceName::parse("f", &s);
        let _ = Zone::parse("f", &s);
        let _ = LabelSelector::parse("f", &s);
    }

    #[test]
    fn selector_like_input_never_panics(s in "[a-z!=(), ]{0,30}( (in|notin) \\([a-z,]{0,10}\\))?") {
        let _ = LabelSelector::parse("f", &s);
    }

    #[test]
    fn cidrs_round_trip(a in any::<u32>(), p in 0u8..=32) {
        let net = ipnetwork::Ipv4Network::new(a.into(), p).unwrap();
        let c = Cidr::from_network(net.into());
        prop_assert_eq!(Cidr::parse("f", &c.to_string()).unwrap(), c);
    }

    #[test]
    fn interface_names_obey_the_kernel_limit(s in "[a-z0-9]{1,20}") {
        prop_assert_eq!(InterfaceName::parse("f", &s).is_ok(), s.len() <= 15);
    }
}
