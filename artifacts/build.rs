//! Rebuild when the embedded built-in artifacts change.

fn main() {
    println!("cargo:rerun-if-changed=definitions");
}
