//! `/openapi.json` against the real thing: a `flamegrid-coordinator --demo` child process (real
//! agent, real workload, real job) on loopback ports the kernel picks.
//!
//! * The document is OpenAPI 3.x and served bare and under `/v1`.
//! * It lists every route the router serves: each route is declared once, by its handler's
//!   `#[utoipa::path]` listed in its module's `routes!`, which mounts it and documents it
//!   together; the router's own source (`src/rest/*.rs`) is read to check that no route is
//!   mounted around the document with a plain `.route("...")` call, and every documented path
//!   answers (below).
//! * Every documented GET, with real ids substituted, answers with a documented status whose
//!   schema validates the body (`jsonschema`, draft 2020-12, which OpenAPI 3.1 uses); error
//!   answers validate against `ErrorBody`; a flame graph with data validates too.
//! * Every documented write answers a form's content type with 415 and a foreign page's JSON
//!   with 403, both documented, and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/demo.rs"]
mod demo_support;

use demo_support::DemoProcess;
use flamegrid_testkit::poll;
use regex::Regex;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

/// `flamegrid-coordinator --demo` as a child process ([`DemoProcess`]: stopped with SIGTERM on
/// drop, so the coordinator stops its agent and workload), with its job and an HTTP client.
struct DemoCoordinator {
    _demo: DemoProcess,
    base: String,
    job_id: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl DemoCoordinator {
    fn start() -> Self {
        let dir = flamegrid_testkit::temp_dir("openapi");
        let demo = DemoProcess::start(dir.path(), &[]);
        let base = format!("http://127.0.0.1:{}", demo.rest);
        // The demo prints the job's URL once the job is registered.
        let job_id = demo.wait_line("the demo's job", |line| {
            let url = line.strip_prefix("flamegrid demo job: ")?;
            url.rsplit('/').next().map(String::from)
        });
        DemoCoordinator {
            _demo: demo,
            base,
            job_id,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// GET → (status, content type, body text).
    async fn get(&self, path: &str) -> (u16, String, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, content_type, response.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> Value {
        let (status, _, text) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// Routes mounted around the document, read from the router's source: every literal
/// `.route("...")` in `src/rest/` (the routes of `routes!` are documented by construction; the
/// unsupported-Flink table in `unsupported.rs` registers its paths from a table, not with
/// literal `.route` calls: those paths answer 404 by design and are not part of the API).
fn plain_routes_in_source() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rest");
    let re = Regex::new(r#"\.route\(\s*"([^"]+)""#).unwrap();
    let mut routes = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for cap in re.captures_iter(&text) {
                routes.insert(cap[1].to_string());
            }
        }
    }
    assert!(files > 10, "too few REST sources found: {files}");
    routes
}

/// Follows a `$ref` inside the document.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => value,
    }
}

/// Checks one answer against the document: the status is documented for this path and method,
/// the content type is one the document names, and a JSON body validates against its schema.
fn check_answer(
    doc: &Value,
    template: &str,
    method: &str,
    status: u16,
    content_type: &str,
    body: &str,
) -> Result<(), String> {
    let op = &doc["paths"][template][method];
    if op.is_null() {
        return Err(format!("{method} {template} is not documented"));
    }
    let Some(response) = op["responses"].get(status.to_string()) else {
        return Err(format!(
            "{method} {template}: status {status} is not documented (body {body})"
        ));
    };
    let response = resolve(doc, response);
    let content = response["content"]
        .as_object()
        .ok_or_else(|| format!("{method} {template} {status}: no content documented"))?;
    let media = content_type.split(';').next().unwrap_or("").trim();
    let Some(documented) = content.get(media) else {
        return Err(format!(
            "{method} {template} {status}: content type {content_type:?} not among {:?}",
            content.keys().collect::<Vec<_>>()
        ));
    };
    if media != "application/json" {
        return Ok(());
    }
    let instance: Value =
        serde_json::from_str(body).map_err(|e| format!("{template}: not JSON ({e}): {body}"))?;
    // The response schema, with the document's components beside it so that its
    // `#/components/schemas/...` references resolve.
    let schema = json!({
        "allOf": [documented["schema"]],
        "components": doc["components"],
    });
    let validator = jsonschema::draft202012::new(&schema)
        .map_err(|e| format!("{template}: schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{method} {template} {status}: body does not match the schema:\n  {}\nbody: {body}",
            errors.join("\n  ")
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_is_openapi_3_and_lists_every_route() {
    let c = DemoCoordinator::start();
    let (status, content_type, text) = c.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(c.get_json("/v1/openapi.json").await, doc);

    // Every route of the router is documented: none is mounted around the document.
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert!(
        documented.len() > 40,
        "too few paths documented: {documented:?}"
    );
    let undocumented = plain_routes_in_source();
    assert!(
        undocumented.is_empty(),
        "routes mounted with a plain .route(...) instead of a documented handler in routes!: \
         {undocumented:?}"
    );

    // The writes, and only they, need the bearer token.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut secured = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("security").is_some() {
                secured.push(format!("{method} {path}"));
            }
        }
    }
    secured.sort();
    assert_eq!(
        secured,
        [
            "patch /jobs/{jobid}",
            "post /jobs",
            "post /jobs/{jobid}/checkpoints"
        ]
    );
    let body = &doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"];
    assert_eq!(
        body["schema"]["$ref"],
        "#/components/schemas/JobRegistration"
    );

    // The keys flamegrid adds or Flink 2.3 sends are in the schemas: the reasons of absent
    // subtasks, and the back pressure level in both spellings, on the vertex and per subtask.
    let schemas = &doc["components"]["schemas"];
    let graph = &schemas["VertexFlameGraph"]["properties"];
    assert!(
        graph.get("missing").is_some()
            && graph.get("missingReasons").is_some()
            && graph.get("latestRunEndTimestamp").is_some(),
        "{graph}"
    );
    for schema in ["Backpressure", "SubtaskBackpressure"] {
        let properties = &schemas[schema]["properties"];
        assert!(
            properties.get("backpressureLevel").is_some()
                && properties.get("backpressure-level").is_some(),
            "{schema}: {properties}"
        );
    }

    // Every path without parameters answers a GET as documented (none is a 404 unless 404 is
    // all it documents: the log files flamegrid does not keep).
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.contains('{') || item.get("get").is_none() {
            continue;
        }
        let (status, content_type, text) = c.get(path).await;
        let only_404 = item["get"]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k == "404");
        assert!(
            status != 404 || only_404,
            "GET {path} is documented but answers 404"
        );
        check_answer(&doc, path, "get", status, &content_type, &text).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_validate_against_the_document() {
    let c = DemoCoordinator::start();
    let doc = c.get_json("/openapi.json").await;
    let job = c.get_json(&format!("/jobs/{}", c.job_id)).await;
    let vertex_id = job["vertices"][0]["id"].as_str().unwrap().to_string();
    let tms = c.get_json("/taskmanagers").await;
    let tm_id = tms["taskmanagers"][0]["id"].as_str().unwrap().to_string();

    // Every documented GET with real ids: the answer is documented and fits its schema.
    let mut checked = 0;
    let mut failures = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_none() {
            continue;
        }
        let path = template
            .replace("{jobid}", &c.job_id)
            .replace("{vertexid}", &vertex_id)
            .replace("{tmid}", &tm_id)
            .replace("{subtaskindex}", "0")
            .replace("{attempt}", "0")
            .replace("{checkpointid}", "1")
            .replace("{name}", "x.log");
        let (status, content_type, text) = c.get(&path).await;
        if let Err(e) = check_answer(&doc, template, "get", status, &content_type, &text) {
            failures.push(e);
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked > 40, "only {checked} paths checked");

    // The key endpoints with query parameters, and error answers.
    let cases = [
        (
            "/jobmanager/metrics?get=numRunningJobs,taskSlotsTotal",
            "/jobmanager/metrics",
            200,
        ),
        ("/jobs/metrics?get=uptime&agg=max,min", "/jobs/metrics", 200),
        ("/jobs/metrics?agg=median", "/jobs/metrics", 400),
        (
            "/taskmanagers/metrics?get=System.CPU.Cores&agg=sum",
            "/taskmanagers/metrics",
            200,
        ),
        ("/jobs/not-an-id", "/jobs/{jobid}", 400),
        (
            "/jobs/00000000000000000000000000000000",
            "/jobs/{jobid}",
            404,
        ),
        ("/taskmanagers/no-such-agent", "/taskmanagers/{tmid}", 404),
    ];
    for (path, template, expected) in cases {
        let (status, content_type, text) = c.get(path).await;
        assert_eq!(status, expected, "GET {path}: {text}");
        check_answer(&doc, template, "get", status, &content_type, &text).unwrap();
    }
    let subtask_path = format!("/jobs/{}/vertices/{vertex_id}/subtasks/99", c.job_id);
    let (status, content_type, text) = c.get(&subtask_path).await;
    assert_eq!(status, 404, "{text}");
    let template = "/jobs/{jobid}/vertices/{vertexid}/subtasks/{subtaskindex}";
    check_answer(&doc, template, "get", status, &content_type, &text).unwrap();

    // A flame graph with data (every answer on the way, sentinels included, fits too).
    let template = "/jobs/{jobid}/vertices/{vertexid}/flamegraph";
    let path = format!(
        "/jobs/{}/vertices/{vertex_id}/flamegraph?type=on_cpu",
        c.job_id
    );
    let graph = poll("a flame graph with data", || async {
        let (status, content_type, text) = c.get(&path).await;
        check_answer(&doc, template, "get", status, &content_type, &text).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v.get("data").is_some().then_some(v)
    })
    .await;
    assert!(graph["endTimestamp"].as_i64().unwrap() > 0, "{graph}");
    assert_eq!(graph["data"]["name"], "root");

    // Every documented write refuses a form's content type (415) and a foreign page's JSON (403)
    // with documented answers, and the demo job is still running afterwards.
    let mut writes = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in ["post", "patch", "put", "delete"] {
            let Some(op) = item.get(method) else { continue };
            if op["responses"].get("415").is_none() {
                continue; // "not supported" routes change nothing and document their 404
            }
            assert!(
                op["responses"].get("403").is_some(),
                "{method} {template}: 403"
            );
            let path = template.replace("{jobid}", &c.job_id);
            let url = format!("{}{path}", c.base);
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for (headers, expected) in [
                (vec![("content-type", "text/plain")], 415),
                (
                    vec![
                        ("content-type", "application/json"),
                        ("origin", "https://evil.example"),
                    ],
                    403,
                ),
            ] {
                let mut request = c.http.request(m.clone(), &url).body("{}");
                for (k, v) in &headers {
                    request = request.header(*k, *v);
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let content_type = response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let text = response.text().await.unwrap();
                assert_eq!(status, expected, "{method} {path} {headers:?}: {text}");
                check_answer(&doc, template, method, status, &content_type, &text).unwrap();
            }
            writes += 1;
        }
    }
    assert!(writes >= 2, "only {writes} write operations document 415");
    let job = c.get_json(&format!("/jobs/{}", c.job_id)).await;
    assert_eq!(job["state"], "RUNNING", "a refused write changed the job");
}
