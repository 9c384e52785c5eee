//! The `onnx-ptq` binary: parses arguments, runs the command, prints an error once, and maps the
//! result to an exit code (0 ok, 1 the model is invalid or misses a bound, 2 usage or I/O error).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let parsed = match cli::Cli::try_parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli::run(parsed) {
        Ok(cli::Outcome::Ok) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            let invalid = e
                .downcast_ref::<onnx_ptq::Error>()
                .is_some_and(onnx_ptq::Error::is_invalid_model);
            ExitCode::from(if invalid { 1 } else { 2 })
        }
    }
}
