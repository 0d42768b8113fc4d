//! Checking the route protocol number against iproute2's protocol names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use overlay_core::ProgrammerError;

/// Where a number is named: file, line number, name.
type Naming = (PathBuf, usize, String);

/// Checks that `protocol` may mark overlay's routes: not 0–4 (unspec,
/// redirect, kernel, boot, static: the kernel's and iproute2's own), and
/// not named in any of the iproute2 protocol files `files` unless under
/// `own_name`. An entry of `files` that is a directory stands for every
/// `*.conf` file in it (iproute2's `rt_protos.d`); missing files and
/// directories are skipped. Lines are `NUMBER NAME` (decimal or `0x` hex),
/// `#` starts a comment.
///
/// The error says which file and line name the number and suggests a free
/// one.
pub fn check_route_protocol(
    protocol: u8,
    own_name: &str,
    files: &[PathBuf],
) -> Result<(), ProgrammerError> {
    let named = read_protocol_names(files);
    if protocol <= 4 {
        return Err(ProgrammerError::InvalidProtocol {
            protocol,
            message: format!(
                "0-4 (unspec, redirect, kernel, boot, static) belong to the kernel and iproute2; {}",
                suggestion(protocol, own_name, &named)
            ),
        });
    }
    if let Some(others) = named.get(&protocol) {
        let foreign: Vec<&Naming> = others.iter().filter(|(_, _, n)| n != own_name).collect();
        if let Some((file, line, name)) = foreign.first() {
            return Err(ProgrammerError::InvalidProtocol {
                protocol,
                message: format!(
                    "{}:{line} names it {name:?}, so other software uses it (overlay would replace and delete its routes); {}",
                    file.display(),
                    suggestion(protocol, own_name, &named)
                ),
            });
        }
    }
    Ok(())
}

/// "use N instead": the highest free number from 250 down, then above.
fn suggestion(protocol: u8, own_name: &str, named: &BTreeMap<u8, Vec<Naming>>) -> String {
    let free = |n: &u8| {
        *n != protocol
            && named
                .get(n)
                .is_none_or(|v| v.iter().all(|(_, _, name)| name == own_name))
    };
    match (5..=250u8).rev().chain(251..=255).find(free) {
        Some(n) => format!(
            "choose a number no file in /etc/iproute2/rt_protos{{,.d}} names, e.g. {n} (and name it {own_name:?} in /etc/iproute2/rt_protos.d/{own_name}.conf)"
        ),
        None => "every number from 5 to 255 is named by other software; free one in /etc/iproute2/rt_protos{,.d}".into(),
    }
}

/// Every number named in `files` (directories: their `*.conf` files).
fn read_protocol_names(files: &[PathBuf]) -> BTreeMap<u8, Vec<Naming>> {
    let mut out: BTreeMap<u8, Vec<Naming>> = BTreeMap::new();
    for f in files {
        if f.is_dir() {
            let mut confs: Vec<PathBuf> = std::fs::read_dir(f)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
                        .collect()
                })
                .unwrap_or_default();
            confs.sort();
            for c in confs {
                read_file(&c, &mut out);
            }
        } else {
            read_file(f, &mut out);
        }
    }
    out
}

fn read_file(path: &Path, out: &mut BTreeMap<u8, Vec<Naming>>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for (i, (number, name)) in parse_protocol_lines(&text) {
        out.entry(number)
            .or_default()
            .push((path.to_owned(), i, name));
    }
}

/// `(line number, (protocol, name))` of each entry, as iproute2 reads
/// them: `NUMBER NAME`, the number decimal or `0x` hex, `#` comments.
/// Numbers above 255 and malformed lines are skipped.
fn parse_protocol_lines(text: &str) -> Vec<(usize, (u8, String))> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut words = line.split_whitespace();
            let number = words.next()?;
            let name = words.next()?;
            let number = match number
                .strip_prefix("0x")
                .or_else(|| number.strip_prefix("0X"))
            {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse::<u32>().ok()?,
            };
            let number = u8::try_from(number).ok()?;
            Some((i + 1, (number, name.to_owned())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_like_iproute2() {
        let text = "#\n# Reserved protocols.\n0\tunspec\n 12 bird # comment\n0x10 dhcp\n300 big\nbogus\n250\n";
        assert_eq!(
            parse_protocol_lines(text),
            vec![
                (3, (0, "unspec".into())),
                (4, (12, "bird".into())),
                (5, (16, "dhcp".into()))
            ]
        );
    }

    #[test]
    fn reserved_numbers_are_refused_without_files() {
        for p in 0..=4 {
            let e = check_route_protocol(p, "overlay", &[]).unwrap_err();
            assert!(
                matches!(e, ProgrammerError::InvalidProtocol { protocol, .. } if protocol == p),
                "{e}"
            );
            assert!(e.to_string().contains("e.g. 250"), "{e}");
        }
        check_route_protocol(5, "overlay", &[]).unwrap();
        check_route_protocol(250, "overlay", &[PathBuf::from("/nonexistent/rt_protos")]).unwrap();
    }
}
