use std::process::ExitCode;

fn main() -> ExitCode {
    match converge::cli::run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("converge: {error:#}");
            ExitCode::from(2)
        }
    }
}
