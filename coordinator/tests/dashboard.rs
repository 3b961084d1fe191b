//! The dashboard in a real browser: `flamegrid-coordinator --demo` (coordinator, agent and the
//! demo pipeline program, all real processes and real sampling) is opened in headless Chromium,
//! and the rendered DOM must show the overview, the job's plan and, on a vertex page, a flame
//! graph whose frames carry the demo's known function names.
//!
//! Chromium is driven with `--dump-dom`: it loads the page, lets its scripts run for a bounded
//! amount of *virtual* time (timers fast-forward, network requests are waited for), and prints
//! the resulting DOM. To keep that deterministic the test first waits, over plain HTTP, until
//! the coordinator has a flame graph for the vertex, so the page's first request gets data.
//!
//! Needs `chromium` on the PATH (Debian: `apt-get install chromium`; `.ci/run` installs it), or
//! its path in `FLAMEGRID_CHROMIUM`. Set `FLAMEGRID_SCREENSHOT_DIR` to also keep screenshots of
//! the pages for a human to look at.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the test waits for a condition before it gives up (a bound for hangs, not a
/// performance assertion: on a healthy machine every wait ends far sooner).
const PATIENCE: Duration = Duration::from_secs(120);

/// A child process that is killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SIGTERM first so the coordinator stops its demo agent and workload itself.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` until it returns `Some`, panicking with `what` after [`PATIENCE`].
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("FLAMEGRID_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("no Chromium found: install Debian's `chromium` package or set FLAMEGRID_CHROMIUM");
}

/// A blocking HTTP client over a private runtime (reqwest is async).
struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(base: String) -> Self {
        Http {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base,
        }
    }

    /// GET a path relative to the dashboard's URL; `None` while the server is not answering.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        self.runtime.block_on(async {
            let response = self
                .client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .ok()?;
            let status = response.status().as_u16();
            Some((status, response.text().await.ok()?))
        })
    }

    fn json(&self, path: &str) -> Option<serde_json::Value> {
        match self.get(path) {
            Some((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }
}

/// Runs headless Chromium on `url` and returns the DOM after the page's scripts ran.
fn dump_dom(browser: &Path, profile: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let mut command = Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--mute-audio",
        "--window-size=1280,900",
        "--virtual-time-budget=6000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(file) => command.arg(format!("--screenshot={}", file.display())),
        None => command.arg("--dump-dom"),
    };
    command
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = KillOnDrop(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display())),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    // Read on a thread so that a browser that never exits cannot hang the test.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        let _ = tx.send(text);
    });
    let dom = rx
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("Chromium did not finish with {url}"));
    let _ = child.0.wait();
    dom
}

/// The text of every flame graph frame element in a dumped DOM.
fn frame_names(dom: &str) -> Vec<String> {
    let frame = regex::Regex::new(r#"<div class="frame[^"]*"[^>]*>([^<]*)</div>"#).unwrap();
    frame.captures_iter(dom).map(|c| unescape(&c[1])).collect()
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Every node name in a Flink flame graph tree.
fn tree_names(node: &serde_json::Value, names: &mut Vec<String>) {
    if let Some(name) = node["name"].as_str() {
        names.push(name.to_string());
    }
    for child in node["children"].as_array().into_iter().flatten() {
        tree_names(child, names);
    }
}

#[test]
fn demo_flame_graph_renders_in_headless_chromium() {
    let browser = chromium();
    let scratch = tempfile::tempdir().unwrap();
    let (rest, rpc) = (free_port(), free_port());

    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_flamegrid-coordinator"));
    coordinator
        .arg("--demo")
        .args(["--rest-addr", &format!("127.0.0.1:{rest}")])
        .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
        .arg("--data-dir")
        .arg(scratch.path().join("data"))
        // Small, quick runs: the test is about the page, not about sampling statistics.
        .args([
            "--flamegraph-num-samples",
            "30",
            "--flamegraph-delay-ms",
            "10",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut coordinator = KillOnDrop(coordinator.spawn().unwrap());

    // The demo prints the dashboard's URL; that URL is what the user opens, so the test does too.
    let (tx, rx) = mpsc::channel();
    let stdout = coordinator.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let url_pattern = regex::Regex::new(r"https?://[^\s]+").unwrap();
    let url = wait_for("the coordinator to print the dashboard URL", || {
        let line = rx.recv_timeout(Duration::from_millis(100)).ok()?;
        url_pattern.find(&line).map(|m| m.as_str().to_string())
    });
    let base = if url.ends_with('/') {
        url.clone()
    } else {
        format!("{url}/")
    };
    assert!(
        base.contains(&format!(":{rest}/")),
        "the printed URL {url} is not on --rest-addr {rest}"
    );
    let http = Http::new(base.clone());

    // The page itself and its assets, as a browser would fetch them.
    let (status, page) = wait_for("the dashboard page", || http.get(""));
    assert_eq!(status, 200);
    assert!(page.contains("assets/app.js"));

    // The demo job, its source vertex, and a first flame graph of it.
    let job = wait_for("the demo job", || {
        let jobs = http.json("jobs/overview")?;
        jobs["jobs"].as_array()?.first().cloned()
    });
    let jid = job["jid"].as_str().unwrap().to_string();
    let job_name = job["name"].as_str().unwrap().to_string();
    let details = http.json(&format!("jobs/{jid}")).unwrap();
    let vertices = details["vertices"].as_array().unwrap().clone();
    assert!(
        vertices.len() >= 2,
        "the demo job has at least two vertices"
    );
    let source = vertices
        .iter()
        .find(|v| v["name"].as_str().is_some_and(|n| n.starts_with("Source")))
        .unwrap_or(&vertices[0]);
    let vid = source["id"].as_str().unwrap().to_string();
    let graph_path = format!("jobs/{jid}/vertices/{vid}/flamegraph?type=on_cpu");
    let tree = wait_for(
        "a flame graph of the source vertex with the demo's CPU chain",
        || {
            let graph = http.json(&graph_path)?;
            let mut names = Vec::new();
            tree_names(&graph["data"], &mut names);
            names.iter().any(|n| n == "hash_field").then_some(names)
        },
    );
    // The demo's sources compute through parse_records -> tokenize -> hash_field.
    let expected = ["parse_records", "tokenize", "hash_field"];
    for name in expected {
        assert!(
            tree.iter().any(|n| n == name),
            "the JSON graph lacks {name}: {tree:?}"
        );
    }

    let screenshots = std::env::var_os("FLAMEGRID_SCREENSHOT_DIR").map(PathBuf::from);
    let open = |fragment: &str, label: &str| {
        let page_url = format!("{base}{fragment}");
        let profile = tempfile::tempdir().unwrap();
        let dom = dump_dom(&browser, profile.path(), &page_url, None);
        if let Some(dir) = &screenshots {
            std::fs::create_dir_all(dir).unwrap();
            let profile = tempfile::tempdir().unwrap();
            dump_dom(
                &browser,
                profile.path(),
                &page_url,
                Some(&dir.join(format!("{label}.png"))),
            );
        }
        dom
    };

    // Overview: the job (linked) and the demo's task manager.
    let overview = open("#/", "overview");
    assert!(
        overview.contains(&format!(r##"href="#/jobs/{jid}""##)),
        "the overview links the job:\n{overview}"
    );
    assert!(overview.contains(&job_name), "the overview names the job");
    assert!(
        overview.contains(r##"href="#/taskmanagers/"##),
        "the overview lists a task manager"
    );

    // Job page: the plan as an SVG graph whose boxes link to every vertex's page.
    let job_page = open(&format!("#/jobs/{jid}"), "job");
    assert!(job_page.contains("<svg"), "the job page draws the plan");
    for vertex in &vertices {
        let link = format!(
            r##"href="#/jobs/{jid}/vertices/{}""##,
            vertex["id"].as_str().unwrap()
        );
        assert!(
            job_page.matches(&link).count() >= 2,
            "the plan box and the table both link {link}"
        );
    }
    assert!(
        job_page.contains("plan-edge"),
        "the plan draws the demo's edges"
    );

    // Vertex page: the flame graph, drawn by the page from the JSON, with the demo's functions.
    let vertex_page = open(&format!("#/jobs/{jid}/vertices/{vid}"), "vertex");
    assert!(
        vertex_page.contains(r#"data-state="ready""#),
        "the flame graph is drawn:\n{vertex_page}"
    );
    let frames = frame_names(&vertex_page);
    assert!(
        frames.first().is_some_and(|f| f == "root"),
        "the first frame is the root: {frames:?}"
    );
    for name in expected {
        assert!(
            frames.iter().any(|f| f == name),
            "no frame {name} on the page; frames: {frames:?}"
        );
    }
    assert!(
        vertex_page.contains("measured"),
        "the page shows the graph's age"
    );
    for view in ["flamegraph.svg?", "flamegraph.folded?", "flamegraph?"] {
        assert!(
            vertex_page.contains(&format!("vertices/{vid}/{view}")),
            "no link to the {view} view"
        );
    }
    assert!(
        vertex_page.contains(r#"value="on_cpu" checked"#),
        "On-CPU is the default view"
    );
    // Recent runs: the kept run on screen is listed (with views at that run), and the page
    // offers the comparison with the previous run (a link once a second run is kept).
    assert!(
        vertex_page.contains("(latest)") && vertex_page.contains("&amp;at="),
        "the kept runs are listed:\n{vertex_page}"
    );
    assert!(
        vertex_page.contains("Compare with previous run"),
        "no compare-with-previous-run offer"
    );
    assert!(
        !vertex_page.contains(r#"class="error""#),
        "an error is shown:\n{vertex_page}"
    );

    // The same page in the off-CPU view: the sinks' waits, not the sources' computing.
    let sink = vertices
        .iter()
        .find(|v| v["name"].as_str().is_some_and(|n| n.starts_with("Sink")));
    if let Some(sink) = sink {
        let sink_id = sink["id"].as_str().unwrap();
        let off_path = format!("jobs/{jid}/vertices/{sink_id}/flamegraph?type=off_cpu");
        wait_for("an off-CPU flame graph of the sink vertex", || {
            let graph = http.json(&off_path)?;
            let mut names = Vec::new();
            tree_names(&graph["data"], &mut names);
            names
                .iter()
                .any(|n| n == "flush_batch" || n == "await_commit")
                .then_some(())
        });
        let sink_page = open(
            &format!("#/jobs/{jid}/vertices/{sink_id}?type=off_cpu"),
            "sink-off-cpu",
        );
        let frames = frame_names(&sink_page);
        assert!(
            frames
                .iter()
                .any(|f| f == "flush_batch" || f == "await_commit"),
            "the off-CPU page lacks the sinks' waits; frames: {frames:?}"
        );
        assert!(sink_page.contains(r#"value="off_cpu" checked"#));
    }
}
