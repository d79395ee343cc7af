use std::process::ExitCode;

pub fn run() -> anyhow::Result<ExitCode> {
    for kind in kiln_kernels::KINDS {
        println!("{}: {}", kind.name, kind.summary);
        for line in kind.params_help.lines() {
            println!("    {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
