//! cargo-fuzz target: CloudFormation templates: the input follows an AWSTemplateFormatVersion line.
//! The properties live in `sg_testkit::random::fuzz::config::check` (shared with the CI test
//! `hardening_config_fuzz`); a broken property panics, which libFuzzer reports as a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sg_testkit::random::fuzz::config::{Shape, check, text_of};

fuzz_target!(|data: &[u8]| {
    if let Some(text) = text_of(data, Shape::CloudFormation) {
        if let Err(e) = check(&text, false) {
            panic!("{e}");
        }
    }
});
