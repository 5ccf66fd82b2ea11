// The Python half of multiprocessing is frozen into the binary by `py_freeze!`, which cargo
// cannot see: rebuild when those sources change.
fn main() {
    println!("cargo:rerun-if-changed=py");
}
