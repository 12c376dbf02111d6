//! The XDP blocklist: any text is a set of prefixes or an error naming
//! its line; a parsed set parses again to itself.
#![no_main]

use edgewatch::datapath::parse_blocklist;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = parse_blocklist("fuzz", text) {
        let again: String = set.iter().map(|n| format!("{n}\n")).collect();
        assert_eq!(parse_blocklist("fuzz", &again).ok(), Some(set));
    }
});
