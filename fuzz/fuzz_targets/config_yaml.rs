//! cargo-fuzz target: Any policy file (native YAML, CloudFormation, describe JSON): parse and validate.
//! The properties live in `sg_testkit::random::fuzz::config::check` (shared with the CI test
//! `hardening_config_fuzz`); a broken property panics, which libFuzzer reports as a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sg_testkit::random::fuzz::config::{Shape, check, text_of};

fuzz_target!(|data: &[u8]| {
    if let Some(text) = text_of(data, Shape::Raw) {
        if let Err(e) = check(&text, false) {
            panic!("{e}");
        }
    }
});
