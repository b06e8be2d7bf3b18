//! `criu-rs check`: CRIU's `check` and `check --feature NAME`. A feature is answered
//! for this kernel, as CRIU answers it (exit 0 when the kernel has it), with a warning
//! when criu-rs does not checkpoint that state yet; `--extra` lists what is missing,
//! by the kernel or by criu-rs (see `criu_core::check`).

use clap::Args;
use criu_core::check::{self, Support};

use crate::logging::LogArgs;

#[derive(Args)]
pub struct CheckArgs {
    /// Check one feature by CRIU's name (`list` prints the names); exit 0 when usable.
    #[arg(long = "feature", value_name = "NAME")]
    feature: Option<String>,
    /// Also report every named feature (CRIU's --extra and --all).
    #[arg(long = "extra", visible_alias = "all")]
    extra: bool,
    #[command(flatten)]
    log: LogArgs,
}

/// Exit 0 when everything asked for is usable, 1 otherwise (as CRIU).
pub fn run(args: CheckArgs) -> Result<i32, String> {
    let _ = &args.log;
    if let Some(name) = &args.feature {
        if name == "list" {
            for name in check::feature_names() {
                println!("{name}");
            }
            return Ok(0);
        }
        // CRIU's question: does this kernel have it. What criu-rs makes of it is said
        // beside, without changing the answer.
        return match check::kernel_feature(name) {
            None => Err(format!(
                "unknown feature {name} (`check --feature list` prints the names)"
            )),
            Some(Support::Yes) => {
                println!("{name} is supported");
                if let Some(Support::NoEngine(why)) = check::feature(name) {
                    println!("Warn: criu-rs does not use it yet: {why}");
                }
                Ok(0)
            }
            Some(Support::NoKernel(why)) => {
                println!("{name} is not supported: {why}");
                Ok(1)
            }
            Some(Support::NoEngine(why)) => {
                println!("{name} is not supported by criu-rs: {why}");
                Ok(1)
            }
        };
    }
    let mut ok = true;
    for (what, result) in check::basic() {
        if let Err(why) = result {
            println!("Error: {what}: {why}");
            ok = false;
        }
    }
    for (cap, why) in check::missing_optional_caps() {
        println!("Warn: {cap} missing: {why}");
    }
    if args.extra {
        for name in check::feature_names() {
            match check::feature(name) {
                Some(Support::Yes) | None => {}
                Some(Support::NoKernel(why)) => println!("Warn: {name}: {why}"),
                Some(Support::NoEngine(why)) => println!("Warn: {name}: criu-rs: {why}"),
            }
        }
    }
    if ok {
        println!("Looks good.");
        Ok(0)
    } else {
        Ok(1)
    }
}
