//! `sg-agent verify`: does the kernel enforce what a policy says? A fresh compile of the
//! policy for this host, for the live generation and with the live counter slots, compared by
//! meaning ([`crate::dataplane::Meaning`]) with the live generation read back from the
//! kernel. A fleet's hosts are checked against the store this way.

use anyhow::{Result, bail};
use serde::Serialize;

use super::apply::{bind_to_host, compile_image};
use super::{Agent, PolicySource};
use crate::dataplane::Meaning;

/// What `verify` found.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub source: String,
    /// Interfaces of the policy on this host.
    pub interfaces: usize,
    pub generation: u32,
    /// The first differences (compiled = "the first", live = "the second"); empty when equal.
    pub differences: Vec<String>,
}

impl Agent {
    pub fn verify(&mut self, src: &dyn PolicySource) -> Result<Verified> {
        let bound = bind_to_host(src)?;
        self.refresh()?;
        if !self.is_applied() {
            bail!("nothing is applied in this namespace");
        }
        let slots = self.state.slot_table();
        let audit = self.state.audit_devices.clone();
        let dp = self.dataplane()?;
        let generation = dp.active_generation();
        let (image, _) = compile_image(&bound, &slots, generation, dp, &audit)?;
        let want = Meaning::of_image(&image);
        let live = dp.live_meaning()?;
        Ok(Verified {
            source: src.describe(),
            interfaces: want.0.len(),
            generation,
            differences: want.differences(&live, 20),
        })
    }
}
