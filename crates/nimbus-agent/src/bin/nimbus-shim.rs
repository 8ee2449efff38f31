//! Stand-alone shim binary (`nimbus-shim __shim CONFIG`), used by the process driver's tests.

fn main() {
    match nimbus_agent::shim::dispatch_from_args() {
        Some(code) => std::process::exit(code),
        None => {
            eprintln!("usage: nimbus-shim __shim CONFIG_FILE");
            std::process::exit(2);
        }
    }
}
