//! `--crash-after STEP`, `--crash-inside STEP` and `--pause-inside STEP`:
//! end the process abruptly (SIGKILL to itself) after or inside a step, or
//! wait inside it to be killed from outside.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use recovery::Run;
use recovery_suite::say;

/// Where in the pipeline a crash may happen.
#[derive(Clone, Copy, Debug)]
pub enum Point {
    /// In the step's body, with outputs half-written in staging.
    Inside(&'static str),
    /// Right after the step committed.
    After(&'static str),
}

#[derive(Debug, Default)]
pub struct Plan {
    pub crash_after: Option<String>,
    pub crash_inside: Option<String>,
    pub pause_inside: Option<String>,
}

static PLAN: OnceLock<Plan> = OnceLock::new();

pub fn set(plan: Plan) {
    let _ = PLAN.set(plan);
}

/// The file `--pause-inside` creates when it starts waiting.
pub fn pause_file(run: &Run) -> PathBuf {
    let mut name = run.dir().file_name().unwrap_or_default().to_owned();
    name.push(".paused");
    run.dir().with_file_name(name)
}

/// Crashes or pauses here if the plan says so.
pub fn maybe(run: &Run, point: Point) {
    let Some(plan) = PLAN.get() else { return };
    let (crash, pause) = match point {
        Point::Inside(step) => (
            plan.crash_inside.as_deref() == Some(step),
            plan.pause_inside.as_deref() == Some(step),
        ),
        Point::After(step) => (plan.crash_after.as_deref() == Some(step), false),
    };
    if crash {
        say!("crashing {point:?} (SIGKILL)");
        kill_self();
    }
    if pause {
        say!("pausing {point:?}: waiting to be killed");
        let _ = std::fs::write(pause_file(run), b"paused");
        std::thread::sleep(Duration::from_secs(600));
    }
}

pub fn kill_self() -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    // `kill` missing: still end without running any cleanup.
    std::process::abort()
}
