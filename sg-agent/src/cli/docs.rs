//! `sg-agent completions SHELL` and `sg-agent man`: generated from the clap definition, so
//! they always match the binary.

use anyhow::Result;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    shell: clap_complete::Shell,
}

pub fn completions(a: &CompletionsArgs) -> Result<()> {
    let mut cmd = super::command();
    clap_complete::generate(a.shell, &mut cmd, "sg-agent", &mut std::io::stdout());
    Ok(())
}

pub fn man() -> Result<()> {
    clap_mangen::Man::new(super::command())
        .render(&mut std::io::stdout())
        .map_err(Into::into)
}
