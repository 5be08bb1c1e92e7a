use recovery::resumable_step;

#[resumable_step("clone")]
struct Clone;

fn main() {}
