//! A family: one instance per item, run from many threads, resumed item by
//! item; outputs written from threads the body starts.

use recovery::{Run, Step, resumable_step};

#[derive(serde::Serialize)]
struct Repo {
    owner: String,
    name: String,
}

#[resumable_step("index", item = (&repo.owner, &repo.name))]
fn index(run: &Run, repo: &Repo) -> std::io::Result<usize> {
    let step = Step::current().expect("inside a step");
    std::thread::scope(|s| {
        s.spawn(|| step.write_output(&format!("index/{}.txt", repo.name), repo.owner.as_bytes()))
            .join()
            .expect("the writer thread")
    })?;
    run.write_output(&format!("names/{}", repo.name), repo.name.as_bytes())?;
    Ok(repo.name.len())
}

#[resumable_step("page", item = n, key = "v1")]
async fn page(run: &Run, n: u32) -> std::io::Result<u32> {
    run.write_output(&format!("pages/{n}"), b"page")?;
    Ok(n * 2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let run = Run::open(tmp.path())?;
    let repos: Vec<Repo> = ["a", "b", "c"]
        .iter()
        .map(|n| Repo { owner: "o".into(), name: (*n).into() })
        .collect();
    std::thread::scope(|s| {
        for repo in &repos {
            let run = &run;
            s.spawn(move || index(run, repo).expect("index"));
        }
    });
    assert_eq!(run.items("index")?.count(), 3);
    assert_eq!(index(&run, &repos[0])?, 1);
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    for n in 1..=3 {
        assert_eq!(rt.block_on(page(&run, n))?, n * 2);
    }
    assert!(run.step_item("page", &2)?.is_done(&"v1", 1)?);
    Ok(())
}
