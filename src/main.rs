//! The `onnx-ptq` command line: parses arguments, calls the library, prints, and maps the result
//! to an exit code (0 ok, 1 the model is invalid, 2 usage or I/O error).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use onnx_ptq::onnx::Model;
use onnx_ptq::validate::{self, ExecOptions};

/// Post-training int8 quantization of ONNX models.
#[derive(Parser, Debug)]
#[command(name = "onnx-ptq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Summarise a model: metadata, inputs/outputs, ops, parameters and where weights live.
    #[command(
        after_help = "Example:\n  onnx-ptq inspect fixtures/cnn.onnx\n  onnx-ptq inspect model.onnx --json > summary.json"
    )]
    Inspect {
        /// The ONNX model file.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a model's structure, then run it once in tract.
    ///
    /// Exit code 0 when both checks pass, 1 when the model is invalid, 2 when it cannot be read.
    #[command(
        after_help = "Example:\n  onnx-ptq validate fixtures/cnn.onnx\n  onnx-ptq validate detector.onnx --dim height=640 --dim width=640 --json"
    )]
    Validate {
        /// The ONNX model file.
        model: PathBuf,
        /// Value of a symbolic input dimension for the execution check, as NAME=VALUE (repeatable).
        #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim)]
        dims: Vec<(String, i64)>,
        /// Value of symbolic dimensions not given with --dim.
        #[arg(long, default_value_t = 1)]
        default_dim: i64,
        /// Only check the structure; do not run the model in tract.
        #[arg(long)]
        no_exec: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_dim(s: &str) -> Result<(String, i64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=VALUE"))?;
    let value: i64 = value
        .parse()
        .map_err(|_| format!("'{value}' is not a whole number"))?;
    if value < 1 {
        return Err(format!("dimension {name} must be at least 1, got {value}"));
    }
    Ok((name.to_string(), value))
}

/// What a successful run concluded.
enum Outcome {
    Ok,
    Invalid,
}

fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Inspect { model, json } => {
            let loaded = Model::load(&model)?;
            let summary = onnx_ptq::inspect::inspect(&loaded);
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
            Ok(Outcome::Ok)
        }
        Command::Validate {
            model,
            dims,
            default_dim,
            no_exec,
            json,
        } => {
            let loaded = Model::load(&model)?;
            let options = ExecOptions {
                dims: dims.into_iter().collect::<BTreeMap<_, _>>(),
                default_dim,
            };
            let report = validate::validate(&loaded.proto, (!no_exec).then_some(&options));
            if json {
                let value = serde_json::json!({
                    "model": model.display().to_string(),
                    "valid": report.is_valid(),
                    "report": report,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).context("encoding JSON")?
                );
            } else {
                println!("{}", model.display());
                print!("{report}");
            }
            Ok(if report.is_valid() {
                Outcome::Ok
            } else {
                Outcome::Invalid
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Invalid) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dims_parse_as_name_value() {
        let cli =
            Cli::try_parse_from(["onnx-ptq", "validate", "m.onnx", "--dim", "batch=4"]).unwrap();
        match cli.command {
            Command::Validate { dims, .. } => assert_eq!(dims, vec![("batch".to_string(), 4)]),
            _ => panic!("expected validate"),
        }
        assert!(Cli::try_parse_from(["onnx-ptq", "validate", "m.onnx", "--dim", "batch"]).is_err());
        assert!(Cli::try_parse_from(["onnx-ptq", "validate", "m.onnx", "--dim", "b=0"]).is_err());
    }
}
