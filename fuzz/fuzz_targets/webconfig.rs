//! The web configuration (exporter-toolkit format): any text is a
//! validated spec or errors; a Basic Authorization header of any bytes
//! parses or not, never panics.
#![no_main]

use edgewatch::{vocab::redact, web};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = web::auth::basic_credentials(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = web::config::parse_and_validate(text);
    let _ = web::config::go_duration(text);
    let _ = redact::url(text);
});
