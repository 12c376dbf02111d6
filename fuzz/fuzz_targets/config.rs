//! The YAML configuration: any text parses to a Config or to errors whose
//! one-line rendering is bounded; validation of what parses never panics.
#![no_main]

use edgewatch::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(mut cfg) => {
            // Skip what validation reads from disk or the host.
            cfg.xdp.interfaces.clear();
            cfg.xdp.blocklist_file = None;
            cfg.web.config_file = None;
            let _ = cfg.validate().map_err(|e| e.to_string());
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "one line");
            assert!(line.len() < 64 * 1024, "bounded: {}", line.len());
        }
    }
});
