//! `fmlab settings`: every FMLAB_* environment setting, its value here, its default and what it
//! does (the registry in crates/settings).

use anyhow::Result;

pub fn run() -> Result<()> {
    print!("{}", fmlab_settings::table());
    Ok(())
}
