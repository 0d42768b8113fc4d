//! phpIPAM benchmark (lands with the phpIPAM backend).
fn main() {}
