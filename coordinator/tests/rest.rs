//! The REST surface over real HTTP against a coordinator started in-process on port 0, with a
//! task manager registered over real gRPC and real processes as subtasks: every endpoint's
//! shape (Flink 2.3's key sets) and values, the conventions (versions, errors, headers), and
//! that bad input gets its 4xx and stores nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#[path = "support/rest.rs"]
mod support;

use serde_json::{Value, json};
use support::*;

const TM: &str = "10.0.0.5:6122-abc:def";

/// A coordinator with one task manager and a running two-vertex job on a real process.
async fn running_job() -> (TestCoordinator, TestAgent, KillOnDrop, String) {
    let c = TestCoordinator::start(&[]).await;
    let mut agent = TestAgent::connect(&c.rpc, TM).await;
    agent.register().await;
    let worker = sleeper();
    let jobid = c.register_job(&two_vertex_job(TM, worker.pid())).await;
    // First heartbeat hands out the watch list (INITIALIZING), the second reports liveness.
    agent.heartbeat().await;
    agent.heartbeat().await;
    let status = c.get_ok(&format!("/jobs/{jobid}")).await;
    assert_eq!(status["state"], "RUNNING");
    for v in status["vertices"].as_array().unwrap() {
        assert_eq!(v["status"], "RUNNING", "{v}");
    }
    (c, agent, worker, jobid)
}

fn io_metrics_shape() -> Vec<(&'static str, char)> {
    vec![
        ("read-bytes", 'i'),
        ("read-bytes-complete", 'b'),
        ("write-bytes", 'i'),
        ("write-bytes-complete", 'b'),
        ("read-records", 'i'),
        ("read-records-complete", 'b'),
        ("write-records", 'i'),
        ("write-records-complete", 'b'),
        ("accumulated-backpressured-time", 'i'),
        ("accumulated-idle-time", 'i'),
        ("accumulated-busy-time", 'f'),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_endpoints_have_flinks_shape() {
    let (c, _agent, _worker, _jobid) = running_job().await;

    let config = c.get_ok("/config").await;
    assert_shape(
        "config",
        &config,
        &[
            ("refresh-interval", 'i'),
            ("timezone-name", 's'),
            ("timezone-offset", 'i'),
            ("flink-version", 's'),
            ("flink-revision", 's'),
            ("features", 'o'),
        ],
    );
    assert_eq!(config["refresh-interval"], 3000);
    assert_shape(
        "features",
        &config["features"],
        &[
            ("web-submit", 'b'),
            ("web-cancel", 'b'),
            ("web-rescale", 'b'),
            ("web-history", 'b'),
        ],
    );

    let overview = c.get_ok("/overview").await;
    assert_shape(
        "overview",
        &overview,
        &[
            ("taskmanagers", 'i'),
            ("slots-total", 'i'),
            ("slots-available", 'i'),
            ("taskmanagers-blocked", 'i'),
            ("slots-free-and-blocked", 'i'),
            ("jobs-running", 'i'),
            ("jobs-finished", 'i'),
            ("jobs-cancelled", 'i'),
            ("jobs-failed", 'i'),
            ("flink-version", 's'),
            ("flink-commit", 's'),
        ],
    );
    assert_eq!(
        (
            overview["taskmanagers"].as_u64(),
            overview["jobs-running"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        (
            overview["slots-total"].as_u64(),
            overview["slots-available"].as_u64()
        ),
        (Some(4), Some(1))
    );
    assert_eq!(
        c.get_ok("/v1/overview").await["taskmanagers"],
        overview["taskmanagers"]
    );

    let jm_config = c.get_ok("/jobmanager/config").await;
    let entries = jm_config.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["key"] == "rest.flamegraph.num-samples" && e["value"] == "100")
    );
    for e in entries {
        assert_shape(
            "jobmanager config entry",
            e,
            &[("key", 's'), ("value", 's')],
        );
    }
    let env = c.get_ok("/jobmanager/environment").await;
    assert_shape(
        "environment",
        &env,
        &[("jvm", 'o'), ("classpath", 'a'), ("host", 'o')],
    );
    assert_shape(
        "jvm",
        &env["jvm"],
        &[("version", 's'), ("arch", 's'), ("options", 'a')],
    );
    // The coordinator's own host (an extra key): the values of this machine and process.
    let host = &env["host"];
    assert_shape(
        "environment host",
        host,
        &[
            ("hostname", 's'),
            ("pid", 'i'),
            ("os", 's'),
            ("kernel", 's'),
            ("cpuCores", 'i'),
            ("physicalMemory", 'i'),
            ("freeMemory", 'i'),
        ],
    );
    let proc_text = |path: &str| std::fs::read_to_string(path).unwrap().trim().to_string();
    assert_eq!(
        host["hostname"].as_str(),
        Some(proc_text("/proc/sys/kernel/hostname").as_str()),
        "{host}"
    );
    assert_eq!(
        host["kernel"].as_str(),
        Some(proc_text("/proc/sys/kernel/osrelease").as_str()),
        "{host}"
    );
    assert_eq!(host["pid"].as_u64(), Some(u64::from(std::process::id())));
    assert!(!host["os"].as_str().unwrap().is_empty(), "{host}");
    assert!(host["cpuCores"].as_u64().unwrap() > 0, "{host}");
    let total = host["physicalMemory"].as_u64().unwrap();
    assert!(
        total > 0 && host["freeMemory"].as_u64().unwrap() <= total,
        "{host}"
    );
    assert_eq!(c.get_ok("/jobmanager/logs").await, json!({"logs": []}));
    let (status, body) = c.get("/jobmanager/logs/..%2F..%2Fetc%2Fpasswd").await;
    assert_eq!(status, 404, "{body}");

    let list = c.get_ok("/jobmanager/metrics").await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|m| m == &json!({"id": "numRegisteredTaskManagers"})),
        "{list}"
    );
    let values = c
        .get_ok("/jobmanager/metrics?get=numRegisteredTaskManagers,numRunningJobs,nope")
        .await;
    assert_eq!(
        values,
        json!([{"id": "numRegisteredTaskManagers", "value": "1"}, {"id": "numRunningJobs", "value": "1"}])
    );

    let dump = c.get_ok("/jobmanager/thread-dump").await;
    let infos = dump["threadInfos"].as_array().unwrap();
    assert!(!infos.is_empty());
    for t in infos {
        assert_shape(
            "thread info",
            t,
            &[("threadName", 's'), ("stringifiedThreadInfo", 's')],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_endpoints_have_flinks_shape_and_values() {
    let (c, _agent, worker, jobid) = running_job().await;

    let jobs = c.get_ok("/jobs").await;
    assert_eq!(jobs, json!({"jobs": [{"id": jobid, "status": "RUNNING"}]}));

    let overview = c.get_ok("/jobs/overview").await;
    let entry = &overview["jobs"][0];
    assert_shape(
        "jobs/overview entry",
        entry,
        &[
            ("jid", 's'),
            ("name", 's'),
            ("jobType", 's'),
            ("schedulerType", 's'),
            ("start-time", 'i'),
            ("end-time", 'i'),
            ("duration", 'i'),
            ("state", 's'),
            ("last-modification", 'i'),
            ("tasks", 'o'),
            ("pending-operators", 'i'),
        ],
    );
    assert_eq!(
        (entry["end-time"].as_i64(), entry["tasks"]["total"].as_u64()),
        (Some(-1), Some(3))
    );
    assert_eq!(entry["tasks"]["running"], 3);
    assert_eq!(entry["tasks"].as_object().unwrap().len(), 11);

    let job = c.get_ok(&format!("/jobs/{jobid}")).await;
    assert_shape(
        "job",
        &job,
        &[
            ("jid", 's'),
            ("application-id", 's'),
            ("name", 's'),
            ("isStoppable", 'b'),
            ("state", 's'),
            ("job-type", 's'),
            ("schedulerType", 's'),
            ("start-time", 'i'),
            ("end-time", 'i'),
            ("duration", 'i'),
            ("maxParallelism", 'i'),
            ("now", 'i'),
            ("timestamps", 'o'),
            ("vertices", 'a'),
            ("status-counts", 'o'),
            ("plan", 'o'),
            ("pending-operators", 'i'),
        ],
    );
    assert_eq!(job["name"], "test-pipeline");
    assert_eq!(job["timestamps"].as_object().unwrap().len(), 11);
    assert!(job["timestamps"]["RUNNING"].as_i64().unwrap() > 0);
    assert_eq!(job["timestamps"]["FINISHED"], 0);
    assert_state_counts("status-counts", &job["status-counts"]);
    assert_eq!(job["status-counts"]["RUNNING"], 2);
    let vertices = job["vertices"].as_array().unwrap();
    assert_eq!(vertices.len(), 2);
    for v in vertices {
        assert_shape(
            "job vertex",
            v,
            &[
                ("id", 's'),
                ("slotSharingGroupId", 's'),
                ("name", 's'),
                ("maxParallelism", 'i'),
                ("parallelism", 'i'),
                ("status", 's'),
                ("start-time", 'i'),
                ("end-time", 'i'),
                ("duration", 'i'),
                ("tasks", 'o'),
                ("metrics", 'o'),
            ],
        );
        assert_eq!(v["id"].as_str().unwrap().len(), 32);
        assert_state_counts("vertex tasks", &v["tasks"]);
        assert_shape("vertex metrics", &v["metrics"], &io_metrics_shape());
    }
    assert_eq!(vertices[0]["parallelism"], 2);
    assert_eq!(vertices[0]["tasks"]["RUNNING"], 2);
    // The plan's node ids are the vertex ids, and the sink's input is the source.
    let plan = c.get_ok(&format!("/jobs/{jobid}/plan")).await;
    assert_eq!(plan["plan"], job["plan"]);
    assert_shape(
        "plan",
        &plan["plan"],
        &[("jid", 's'), ("name", 's'), ("type", 's'), ("nodes", 'a')],
    );
    let nodes = plan["plan"]["nodes"].as_array().unwrap();
    let node_ids: Vec<&Value> = nodes.iter().map(|n| &n["id"]).collect();
    let vertex_ids: Vec<&Value> = vertices.iter().map(|v| &v["id"]).collect();
    assert_eq!(node_ids, vertex_ids);
    assert_shape(
        "source node",
        &nodes[0],
        &[
            ("id", 's'),
            ("parallelism", 'i'),
            ("operator", 's'),
            ("operator_strategy", 's'),
            ("description", 's'),
            ("optimizer_properties", 'o'),
        ],
    );
    assert_eq!(nodes[1]["description"], "Sink: &lt;sleeper&gt;");
    assert_shape(
        "edge",
        &nodes[1]["inputs"][0],
        &[
            ("num", 'i'),
            ("id", 's'),
            ("ship_strategy", 's'),
            ("exchange", 's'),
        ],
    );
    assert_eq!(nodes[1]["inputs"][0]["id"], vertices[0]["id"]);

    assert_eq!(
        c.get_ok(&format!("/jobs/{jobid}/status")).await,
        json!({"status": "RUNNING"})
    );
    assert_eq!(
        c.get_ok(&format!("/v1/jobs/{}/status", jobid.to_uppercase()))
            .await,
        json!({"status": "RUNNING"})
    );

    // The neutral job-level paths.
    assert_eq!(
        c.get_ok(&format!("/jobs/{jobid}/exceptions")).await,
        json!({"exceptionHistory": {"entries": [], "truncated": false}})
    );
    let config = c.get_ok(&format!("/jobs/{jobid}/config")).await;
    assert_shape(
        "job config",
        &config,
        &[("jid", 's'), ("name", 's'), ("execution-config", 'o')],
    );
    assert_shape(
        "execution-config",
        &config["execution-config"],
        &[
            ("restart-strategy", 's'),
            ("job-parallelism", 'i'),
            ("object-reuse-mode", 'b'),
            ("user-config", 'o'),
        ],
    );
    let checkpoints = c.get_ok(&format!("/jobs/{jobid}/checkpoints")).await;
    assert_shape(
        "checkpoints",
        &checkpoints,
        &[
            ("counts", 'o'),
            ("summary", 'o'),
            ("latest", 'o'),
            ("history", 'a'),
        ],
    );
    assert_shape(
        "counts",
        &checkpoints["counts"],
        &[
            ("restored", 'i'),
            ("total", 'i'),
            ("in_progress", 'i'),
            ("completed", 'i'),
            ("failed", 'i'),
        ],
    );
    for key in [
        "checkpointed_size",
        "state_size",
        "end_to_end_duration",
        "alignment_buffered",
        "processed_data",
        "persisted_data",
    ] {
        assert_shape(
            key,
            &checkpoints["summary"][key],
            &[
                ("min", 'i'),
                ("max", 'i'),
                ("avg", 'i'),
                ("p50", 'f'),
                ("p90", 'f'),
                ("p95", 'f'),
                ("p99", 'f'),
                ("p999", 'f'),
            ],
        );
    }
    let cp_config = c.get_ok(&format!("/jobs/{jobid}/checkpoints/config")).await;
    assert_eq!(cp_config["externalization"]["enabled"], false);
    assert_eq!(
        c.get_ok(&format!("/jobs/{jobid}/accumulators")).await,
        json!({"job-accumulators": [], "user-task-accumulators": [], "serialized-user-task-accumulators": {}})
    );
    assert_eq!(
        c.get_ok(&format!("/jobs/{jobid}/execution-result")).await,
        json!({"status": {"id": "IN_PROGRESS"}})
    );
    let metrics = c.get_ok(&format!("/jobs/{jobid}/metrics")).await;
    assert!(
        metrics
            .as_array()
            .unwrap()
            .contains(&json!({"id": "uptime"})),
        "{metrics}"
    );
    let agg = c.get_ok("/jobs/metrics?get=numRestarts&agg=sum,max").await;
    assert_eq!(agg, json!([{"id": "numRestarts", "sum": 0.0, "max": 0.0}]));
    let (status, body) = c.get("/jobs/metrics?get=numRestarts&agg=median").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("Cannot resolve query parameter (agg)"),
        "{body}"
    );
    let jm = c.get_ok(&format!("/jobs/{jobid}/jobmanager/config")).await;
    assert_eq!(jm, c.get_ok("/jobmanager/config").await);
    let env = c
        .get_ok(&format!("/jobs/{jobid}/jobmanager/environment"))
        .await;
    assert!(env["jvm"]["arch"].is_string());
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        c.get(&format!("/jobs/{unknown}/jobmanager/config")).await.0,
        404
    );
    assert_eq!(
        c.get(&format!("/jobs/{jobid}/checkpoints/details/7"))
            .await
            .0,
        404
    );
    assert_eq!(
        c.get(&format!("/jobs/{jobid}/checkpoints/details/x"))
            .await
            .0,
        400
    );
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_endpoints_have_flinks_shape_and_values() {
    let (c, _agent, _worker, jobid) = running_job().await;
    let job = c.get_ok(&format!("/jobs/{jobid}")).await;
    let vid = job["vertices"][0]["id"].as_str().unwrap().to_string();
    let base = format!("/jobs/{jobid}/vertices/{vid}");

    let vertex = c.get_ok(&base).await;
    assert_shape(
        "vertex",
        &vertex,
        &[
            ("id", 's'),
            ("name", 's'),
            ("parallelism", 'i'),
            ("maxParallelism", 'i'),
            ("now", 'i'),
            ("subtasks", 'a'),
            ("aggregated", 'o'),
        ],
    );
    let subtasks = vertex["subtasks"].as_array().unwrap();
    assert_eq!(subtasks.len(), 2);
    let subtask_shape = [
        ("subtask", 'i'),
        ("status", 's'),
        ("attempt", 'i'),
        ("endpoint", 's'),
        ("start-time", 'i'),
        ("end-time", 'i'),
        ("duration", 'i'),
        ("metrics", 'o'),
        ("taskmanager-id", 's'),
        ("status-duration", 'o'),
        ("start_time", 'i'),
    ];
    for (i, s) in subtasks.iter().enumerate() {
        assert_shape("subtask", s, &subtask_shape);
        assert_eq!(
            (s["subtask"].as_u64(), s["status"].as_str()),
            (Some(i as u64), Some("RUNNING"))
        );
        assert_eq!(
            (s["taskmanager-id"].as_str(), s["endpoint"].as_str()),
            (Some(TM), Some("127.0.0.1:6122"))
        );
        assert_shape(
            "status-duration",
            &s["status-duration"],
            &[
                ("CREATED", 'i'),
                ("SCHEDULED", 'i'),
                ("DEPLOYING", 'i'),
                ("INITIALIZING", 'i'),
                ("RUNNING", 'i'),
            ],
        );
        assert!(s["start-time"].as_i64().unwrap() > 0);
        assert_eq!(s["end-time"], -1);
        // Values: CREATED, SCHEDULED and DEPLOYING share the placement stamp (= start-time),
        // so only DEPLOYING lasts (until INITIALIZING); the running subtask's durations add up
        // to the response's own `now` minus that stamp, which is also its `duration`.
        let durations = &s["status-duration"];
        assert_eq!(
            (
                durations["CREATED"].as_i64(),
                durations["SCHEDULED"].as_i64()
            ),
            (Some(0), Some(0)),
            "{durations}"
        );
        let sum: i64 = [
            "CREATED",
            "SCHEDULED",
            "DEPLOYING",
            "INITIALIZING",
            "RUNNING",
        ]
        .iter()
        .map(|k| durations[*k].as_i64().unwrap())
        .sum();
        let since_created = vertex["now"].as_i64().unwrap() - s["start-time"].as_i64().unwrap();
        assert_eq!(sum, since_created, "{s}");
        assert_eq!(s["duration"].as_i64(), Some(since_created), "{s}");
    }
    // The vertex's aggregate sums the subtasks' durations (not three times DEPLOYING's).
    for key in [
        "CREATED",
        "SCHEDULED",
        "DEPLOYING",
        "INITIALIZING",
        "RUNNING",
    ] {
        let total: i64 = subtasks
            .iter()
            .map(|s| s["status-duration"][key].as_i64().unwrap())
            .sum();
        assert_eq!(
            vertex["aggregated"]["status-duration"][key]["sum"].as_i64(),
            Some(total),
            "{key}: {vertex}"
        );
    }
    assert_eq!(vertex["aggregated"]["status-duration"]["CREATED"]["max"], 0);
    let stats_shape = [
        ("min", 'i'),
        ("max", 'i'),
        ("avg", 'i'),
        ("sum", 'i'),
        ("median", 'i'),
        ("p25", 'i'),
        ("p75", 'i'),
        ("p95", 'i'),
    ];
    assert_shape(
        "aggregated",
        &vertex["aggregated"],
        &[("metrics", 'o'), ("status-duration", 'o')],
    );
    assert_eq!(
        vertex["aggregated"]["metrics"].as_object().unwrap().len(),
        7
    );
    for (_, stats) in vertex["aggregated"]["status-duration"].as_object().unwrap() {
        assert_shape("stats", stats, &stats_shape);
    }

    let tms = c.get_ok(&format!("{base}/taskmanagers")).await;
    assert_shape(
        "vertex taskmanagers",
        &tms,
        &[
            ("id", 's'),
            ("name", 's'),
            ("now", 'i'),
            ("taskmanagers", 'a'),
        ],
    );
    let tm = &tms["taskmanagers"][0];
    assert_shape(
        "vertex taskmanager",
        tm,
        &[
            ("endpoint", 's'),
            ("status", 's'),
            ("start-time", 'i'),
            ("end-time", 'i'),
            ("duration", 'i'),
            ("metrics", 'o'),
            ("status-counts", 'o'),
            ("taskmanager-id", 's'),
            ("aggregated", 'o'),
        ],
    );
    assert_eq!(
        (
            tm["taskmanager-id"].as_str(),
            tm["status-counts"]["RUNNING"].as_u64()
        ),
        (Some(TM), Some(2))
    );

    let times = c.get_ok(&format!("{base}/subtasktimes")).await;
    assert_shape(
        "subtasktimes",
        &times,
        &[("id", 's'), ("name", 's'), ("now", 'i'), ("subtasks", 'a')],
    );
    let t0 = &times["subtasks"][0];
    assert_shape(
        "subtask times",
        t0,
        &[
            ("subtask", 'i'),
            ("endpoint", 's'),
            ("duration", 'i'),
            ("timestamps", 'o'),
        ],
    );
    assert_state_counts("timestamps", &t0["timestamps"]);
    assert!(
        t0["timestamps"]["RUNNING"].as_i64().unwrap()
            >= t0["timestamps"]["INITIALIZING"].as_i64().unwrap()
    );
    assert_eq!(t0["timestamps"]["FINISHED"], 0);

    let accs = c.get_ok(&format!("{base}/subtasks/accumulators")).await;
    assert_eq!(accs["parallelism"], 2);
    assert_eq!(accs["subtasks"][1]["user-accumulators"], json!([]));
    let one = c.get_ok(&format!("{base}/subtasks/1")).await;
    assert_shape("subtask 1", &one, &subtask_shape);
    assert_eq!(one["subtask"], 1);
    assert_eq!(
        c.get_ok(&format!("{base}/subtasks/1/attempts/0")).await["subtask"],
        1
    );
    let (status, body) = c.get(&format!("{base}/subtasks/2")).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("Invalid subtask index"),
        "{body}"
    );
    let (status, _) = c.get(&format!("{base}/subtasks/-1")).await;
    assert_eq!(status, 400);

    assert_eq!(c.get_ok(&format!("{base}/watermarks")).await, json!([]));
    assert_eq!(
        c.get_ok(&format!("{base}/subtasks/metrics")).await,
        json!([])
    );
    assert_eq!(
        c.get_ok(&format!("{base}/metrics?get=numRecordsIn")).await,
        json!([])
    );
    assert_eq!(
        c.get_ok(&format!("{base}/accumulators")).await,
        json!({"id": vid, "user-accumulators": []})
    );
    let bp = c.get_ok(&format!("{base}/backpressure")).await;
    assert_shape(
        "backpressure",
        &bp,
        &[
            ("status", 's'),
            ("backpressureLevel", 's'),
            ("backpressure-level", 's'),
            ("end-timestamp", 'i'),
            ("subtasks", 'a'),
        ],
    );
    assert_eq!(bp["subtasks"].as_array().unwrap().len(), 2);
    // Flink 2.3 writes the level twice, camelCase and hyphenated, on every subtask too.
    for (i, sub) in bp["subtasks"].as_array().unwrap().iter().enumerate() {
        assert_shape(
            "backpressure subtask",
            sub,
            &[
                ("subtask", 'i'),
                ("backpressureLevel", 's'),
                ("backpressure-level", 's'),
                ("ratio", 'f'),
                ("idleRatio", 'f'),
                ("busyRatio", 'f'),
            ],
        );
        assert_eq!(sub["subtask"], json!(i));
        assert_eq!(sub["backpressureLevel"], sub["backpressure-level"]);
    }
    assert_eq!(bp["backpressureLevel"], bp["backpressure-level"]);

    // Unknown and malformed vertex ids.
    let (status, body) = c
        .get(&format!("/jobs/{jobid}/vertices/{}", "0".repeat(32)))
        .await;
    assert_eq!(status, 404);
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("No vertex with ID"),
        "{body}"
    );
    let (status, body) = c.get(&format!("/jobs/{jobid}/vertices/nothex")).await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("Cannot resolve path parameter (vertexid)"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taskmanager_endpoints_have_flinks_shape_and_values() {
    let (c, _agent, _worker, jobid) = running_job().await;
    let list = c.get_ok("/taskmanagers").await;
    let tms = list["taskmanagers"].as_array().unwrap();
    assert_eq!(tms.len(), 1);
    let info_shape = vec![
        ("id", 's'),
        ("path", 's'),
        ("dataPort", 'i'),
        ("jmxPort", 'i'),
        ("timeSinceLastHeartbeat", 'i'),
        ("slotsNumber", 'i'),
        ("freeSlots", 'i'),
        ("assignedTasks", 'i'),
        ("totalResource", 'o'),
        ("freeResource", 'o'),
        ("hardware", 'o'),
        ("memoryConfiguration", 'o'),
        ("hostname", 's'),
        ("os", 's'),
        ("kernel", 's'),
        ("agentVersion", 's'),
    ];
    assert_shape("taskmanager", &tms[0], &info_shape);
    // The host facts the agent registered with (extra keys, beside Flink's).
    let registered =
        json!({"hostname": "test-host", "os": "Linux", "kernel": "6.1", "agentVersion": "0.1.0"});
    for (key, value) in registered.as_object().unwrap() {
        assert_eq!(&tms[0][key], value, "{key}");
    }
    assert_eq!(
        (tms[0]["id"].as_str(), tms[0]["dataPort"].as_i64()),
        (Some(TM), Some(6122))
    );
    assert_eq!(
        tms[0]["hardware"],
        json!({"cpuCores": 4, "physicalMemory": 8u64 << 30, "freeMemory": 1u64 << 30, "managedMemory": 0})
    );
    assert_shape(
        "resource",
        &tms[0]["totalResource"],
        &[
            ("cpuCores", 'f'),
            ("taskHeapMemory", 'i'),
            ("taskOffHeapMemory", 'i'),
            ("managedMemory", 'i'),
            ("networkMemory", 'i'),
            ("extendedResources", 'o'),
        ],
    );

    // Ids may contain ':' (and need percent-encoding only for '/', '?', '#').
    let details = c.get_ok(&format!("/taskmanagers/{TM}")).await;
    let mut detail_shape = info_shape.clone();
    detail_shape.extend([("allocatedSlots", 'a'), ("metrics", 'o')]);
    assert_shape("taskmanager details", &details, &detail_shape);
    for (key, value) in registered.as_object().unwrap() {
        assert_eq!(&details[key], value, "{key}");
    }
    assert_eq!(details["allocatedSlots"][0]["jobId"], jobid.as_str());
    assert_eq!(details["allocatedSlots"][0]["assignedTasks"], 3);
    assert_eq!(details["metrics"]["garbageCollectors"], json!([]));

    let metrics = c.get_ok(&format!("/taskmanagers/{TM}/metrics")).await;
    assert!(
        metrics
            .as_array()
            .unwrap()
            .contains(&json!({"id": "System.CPU.Usage"})),
        "{metrics}"
    );
    let values = c
        .get_ok(&format!(
            "/taskmanagers/{TM}/metrics?get=System.CPU.Usage,System.Memory.Total"
        ))
        .await;
    assert_eq!(
        values,
        json!([{"id": "System.CPU.Usage", "value": "12.5"}, {"id": "System.Memory.Total", "value": (8u64 << 30).to_string()}])
    );
    let agg = c
        .get_ok("/taskmanagers/metrics?get=System.CPU.Usage&agg=min,avg")
        .await;
    assert_eq!(
        agg,
        json!([{"id": "System.CPU.Usage", "min": 12.5, "avg": 12.5}])
    );
    let all = c.get_ok("/taskmanagers/metrics").await;
    assert!(
        all.as_array()
            .unwrap()
            .contains(&json!({"id": "System.Load.1"}))
    );
    assert_eq!(
        c.get_ok(&format!("/taskmanagers/{TM}/logs")).await,
        json!({"logs": []})
    );

    let (status, body) = c.get("/taskmanagers/nope:1").await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"errors": ["Could not find TaskExecutor nope:1."]})
    );
    let (status, _) = c.get("/taskmanagers/nope:1/metrics").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_exit_finishes_and_cancel_cancels() {
    let (c, mut agent, mut worker, jobid) = running_job().await;
    // A second job on the same process, to cancel.
    let other = c.register_job(&two_vertex_job(TM, worker.pid())).await;
    agent.heartbeat().await;
    agent.heartbeat().await;
    assert_eq!(
        c.get_ok(&format!("/jobs/{other}/status")).await["status"],
        "RUNNING"
    );

    let (status, body) = c.patch(&format!("/jobs/{other}?mode=cancel")).await;
    assert_eq!((status, body), (202, json!({})));
    let job = c.get_ok(&format!("/jobs/{other}")).await;
    assert_eq!(job["state"], "CANCELED");
    assert!(job["end-time"].as_i64().unwrap() > 0);
    assert!(job["timestamps"]["CANCELED"].as_i64().unwrap() > 0);
    assert_eq!(job["vertices"][0]["status"], "CANCELED");
    // Cancelling it again succeeds like Flink's Dispatcher (the job is canceled) and changes
    // nothing.
    let (status, body) = c.patch(&format!("/jobs/{other}")).await;
    assert_eq!((status, body), (202, json!({})));
    let mut again = c.get_ok(&format!("/jobs/{other}")).await;
    again["now"] = job["now"].clone();
    assert_eq!(again, job, "a second cancel changes nothing");
    assert_eq!(
        c.get_ok(&format!("/jobs/{other}/execution-result")).await["job-execution-result"]["application-status"],
        "CANCELED"
    );

    // The watched process exits: the agent reports it gone, the first job FINISHES.
    worker.kill();
    let mut job = Value::Null;
    for _ in 0..600 {
        agent.heartbeat().await;
        job = c.get_ok(&format!("/jobs/{jobid}")).await;
        if job["state"] == "FINISHED" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        job["state"], "FINISHED",
        "job should finish after its process exited"
    );
    assert_eq!(job["vertices"][1]["status"], "FINISHED");
    assert!(
        job["timestamps"]["FINISHED"].as_i64().unwrap()
            >= job["timestamps"]["RUNNING"].as_i64().unwrap()
    );
    let vertex = c
        .get_ok(&format!(
            "/jobs/{jobid}/vertices/{}",
            job["vertices"][0]["id"].as_str().unwrap()
        ))
        .await;
    assert!(vertex["subtasks"][0]["end-time"].as_i64().unwrap() > 0);
    // Cancelling a job that ended in another state is a conflict, as in Flink.
    let (status, body) = c.patch(&format!("/jobs/{jobid}")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("(FINISHED)"),
        "{body}"
    );
    let overview = c.get_ok("/overview").await;
    assert_eq!(
        (
            overview["jobs-finished"].as_u64(),
            overview["jobs-cancelled"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // Terminal subtasks are no longer watched.
    assert!(agent.heartbeat().await.watch.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_modes_and_unknown_jobs() {
    let (c, _agent, _worker, jobid) = running_job().await;
    let (status, body) = c.patch(&format!("/jobs/{jobid}?mode=stop")).await;
    assert_eq!(status, 308, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("\"stop\" has been removed")
    );
    let (status, body) = c.patch(&format!("/jobs/{jobid}?mode=explode")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        c.get_ok(&format!("/jobs/{jobid}/status")).await["status"],
        "RUNNING",
        "nothing changed"
    );
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        c.patch(&format!("/jobs/{unknown}")).await,
        (404, json!({"errors": ["Job could not be found."]}))
    );
    let (status, body) = c.get(&format!("/jobs/{unknown}")).await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0], format!("Job {unknown} not found"));
    for path in ["/jobs/xyz", "/jobs/xyz/plan", "/jobs/0123/status"] {
        let (status, body) = c.get(path).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .contains("Cannot resolve path parameter (jobid)"),
            "{body}"
        );
    }
    // Cancel with an upper-case id and mode.
    assert_eq!(
        c.patch(&format!("/jobs/{}?mode=CANCEL", jobid.to_uppercase()))
            .await
            .0,
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_bodies_get_400_naming_the_field_and_store_nothing() {
    let c = TestCoordinator::start(&[]).await;
    let mut agent = TestAgent::connect(&c.rpc, TM).await;
    agent.register().await;
    let ok_subtask = json!({"taskmanager": TM, "pid": 1});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"vertices": [{"name": "a", "parallelism": 1, "subtasks": [ok_subtask]}]}),
            "name: missing",
        ),
        (
            json!({"name": "j", "vertices": []}),
            "vertices: must not be empty",
        ),
        (
            json!({"name": "j", "vertices": [{"name": "a", "parallelism": 2, "subtasks": [ok_subtask]}]}),
            "vertices[0].parallelism",
        ),
        (
            json!({"name": "j", "vertices": [{"name": "a", "parallelism": 1, "subtasks": [{"taskmanager": TM}]}]}),
            "vertices[0].subtasks[0]: give exactly one of \"pid\" and \"process_name\"",
        ),
        (
            json!({"name": "j", "vertices": [{"name": "a", "parallelism": 1,
                   "subtasks": [{"taskmanager": TM, "pid": 1, "process_name": "x"}]}]}),
            "not both",
        ),
        (
            json!({"name": "j", "vertices": [{"name": "a", "parallelism": 1,
                   "subtasks": [{"taskmanager": TM, "pid": 1, "thread_name": "(["}]}]}),
            "vertices[0].subtasks[0].thread_name: not a valid regular expression",
        ),
        (
            json!({"name": "j", "vertices": [{"name": "a", "parallelism": 1, "subtasks": [ok_subtask]},
                   {"name": "b", "parallelism": 1, "inputs": [1], "subtasks": [ok_subtask]}]}),
            "vertices[1].inputs[0]: expected the index of an earlier vertex",
        ),
        (
            json!({"name": "j", "vertices": [{"name": "a", "parallelism": 1,
                   "subtasks": [{"taskmanager": "nobody", "pid": 1}]}]}),
            "vertices[0].subtasks[0].taskmanager: no task manager \"nobody\"",
        ),
        (
            json!({"name": "j", "vertices": [{"name": "a", "parallelism": 1,
                   "subtasks": [{"taskmanager": TM, "pid": -3}]}]}),
            "vertices[0].subtasks[0].pid",
        ),
        (
            json!({"name": "j", "vertices": [{"name": "a", "parallelism": 1,
                   "subtasks": [{"taskmanager": TM, "process_name": "a-much-too-long-name"}]}]}),
            "vertices[0].subtasks[0].process_name",
        ),
        (
            json!({"name": "x".repeat(300), "vertices": []}),
            "name: at most 256 characters",
        ),
        (
            json!({"name": "j", "vertices": [{"name": "a", "parallelism": 1, "subtasks": [ok_subtask], "typo": 1}]}),
            "vertices[0].typo: unknown field",
        ),
        (json!([1, 2]), "body: expected a JSON object"),
    ];
    for (body, needle) in cases {
        let (status, answer) = c.post("/jobs", &body).await;
        assert_eq!(status, 400, "{body} → {answer}");
        let errors = answer["errors"].as_array().unwrap();
        assert!(
            errors.iter().any(|e| e.as_str().unwrap().contains(needle)),
            "expected {needle:?} in {answer}"
        );
    }
    // Not JSON at all.
    let (status, answer) = send(
        c.http
            .post(c.url("/jobs"))
            .header("content-type", "application/json")
            .body("{\"name\":"),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    // Over 16 MiB, the limit of a job registration (other bodies: 1 MiB).
    let huge = format!(
        "{{\"name\": \"{}\", \"vertices\": []}}",
        "x".repeat(16 << 20)
    );
    let (status, answer) = send(
        c.http
            .post(c.url("/jobs"))
            .header("content-type", "application/json")
            .body(huge),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["errors"][0].as_str().unwrap().contains("16 MiB"));
    // Nothing was stored.
    assert_eq!(c.get_ok("/jobs").await, json!({"jobs": []}));
    assert_eq!(c.get_ok("/jobs/overview").await, json!({"jobs": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conventions_versions_errors_headers() {
    let c = TestCoordinator::start(&[]).await;
    // Content type, security headers and no wildcard CORS, bare and /v1.
    for path in ["/config", "/v1/config", "/jobs/nothex"] {
        let response = c.http.get(c.url(path)).send().await.unwrap();
        let headers = response.headers();
        assert_eq!(
            headers["content-type"], "application/json; charset=UTF-8",
            "{path}"
        );
        assert!(
            !headers.contains_key("access-control-allow-origin"),
            "{path}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["vary"], "origin", "{path}");
    }
    // Unknown versions and paths.
    assert_eq!(
        c.get("/v2/overview").await,
        (404, json!({"errors": ["File not found."]}))
    );
    assert_eq!(
        c.get("/no/such/path").await,
        (404, json!({"errors": ["File not found."]}))
    );
    assert_eq!(
        c.patch("/v2/jobs/x").await,
        (404, json!({"errors": ["Not found: /v2/jobs/x"]}))
    );
    // Methods a path does not serve: 405 with a JSON error, never 501.
    for method in ["DELETE", "PUT", "TRACE", "QUERY", "FROBNICATE"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = send(c.http.request(m, c.url("/jobs"))).await;
        assert_eq!(status, 405, "{method}: {body}");
        assert!(body["errors"][0].is_string(), "{method}: {body}");
    }
    let (status, _) = send(c.http.post(c.url("/v1/overview"))).await;
    assert_eq!(status, 405);
    // CORS preflight: no wildcard; an origin not listed with --cors-origin is refused (the
    // cross-site tests in secure_defaults.rs cover listed origins).
    let response = c
        .http
        .request(reqwest::Method::OPTIONS, c.url("/jobs"))
        .header("origin", "http://example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_flink_paths_say_so_in_json() {
    let c = TestCoordinator::start(&[]).await;
    let jid = "0123456789abcdef0123456789abcdef";
    let cases: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::GET, "/jars".into()),
        (reqwest::Method::POST, "/jars/upload".into()),
        (reqwest::Method::POST, "/jars/x.jar/run".into()),
        (reqwest::Method::POST, format!("/jobs/{jid}/savepoints")),
        (reqwest::Method::POST, format!("/jobs/{jid}/stop")),
        (reqwest::Method::PATCH, format!("/v1/jobs/{jid}/rescaling")),
        (reqwest::Method::GET, "/datasets".into()),
        (reqwest::Method::POST, format!("/jobs/{jid}/checkpoints")),
        (reqwest::Method::DELETE, "/cluster".into()),
        (reqwest::Method::POST, "/savepoint-disposal".into()),
        (reqwest::Method::GET, format!("/jobs/{jid}/yarn-cancel")),
        (
            reqwest::Method::GET,
            format!("/jobs/{jid}/jobmanager/log-url"),
        ),
        (reqwest::Method::GET, "/jobmanager/profiler".into()),
        (
            reqwest::Method::GET,
            format!("/jobs/{jid}/checkpoints/details/7/subtasks/{jid}"),
        ),
        (reqwest::Method::GET, format!("/jobs/{jid}/rescales/config")),
        (
            reqwest::Method::GET,
            format!("/jobs/{jid}/rescales/overview"),
        ),
        (
            reqwest::Method::GET,
            format!("/v1/jobs/{jid}/rescales/history"),
        ),
        (
            reqwest::Method::GET,
            format!("/jobs/{jid}/rescales/summary"),
        ),
        (
            reqwest::Method::GET,
            format!("/jobs/{jid}/rescales/details/0b4e2d1c-8f3a-4c5e-9d6b-7a1f2e3c4d5e"),
        ),
    ];
    for (method, path) in cases {
        let (status, body) = send(c.http.request(method.clone(), c.url(&path))).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .contains("flamegrid does not support"),
            "{method} {path}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_can_be_refused_or_require_a_token() {
    let c = TestCoordinator::start(&["--read-only"]).await;
    let mut agent = TestAgent::connect(&c.rpc, TM).await;
    agent.register().await;
    let job = two_vertex_job(TM, 1);
    let (status, body) = c.post("/jobs", &job).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(c.get_ok("/jobs").await, json!({"jobs": []}));
    assert_eq!(c.get_ok("/config").await["features"]["web-cancel"], false);

    let dir = temp_dir("rest-token");
    let token = dir.path().join("rest-token");
    std::fs::write(&token, "let-me-write\n").unwrap();
    let c = TestCoordinator::start(&["--rest-token-file", token.to_str().unwrap()]).await;
    let mut agent = TestAgent::connect(&c.rpc, TM).await;
    agent.register().await;
    let (status, body) = c.post("/jobs", &job).await;
    assert_eq!(status, 401, "{body}");
    let wrong = c
        .http
        .post(c.url("/jobs"))
        .header("content-type", "application/json")
        .bearer_auth("let-me-writE")
        .body(job.to_string());
    assert_eq!(send(wrong).await.0, 401);
    assert_eq!(
        c.get_ok("/jobs").await,
        json!({"jobs": []}),
        "refused writes store nothing"
    );
    let right = c
        .http
        .post(c.url("/jobs"))
        .header("content-type", "application/json")
        .bearer_auth("let-me-write")
        .body(job.to_string());
    let (status, body) = send(right).await;
    assert_eq!(status, 202, "{body}");
    let jobid = body["jobid"].as_str().unwrap();
    assert_eq!(c.patch(&format!("/jobs/{jobid}")).await.0, 401);
    let cancel = c
        .http
        .patch(c.url(&format!("/jobs/{jobid}")))
        .header("content-type", "application/json")
        .bearer_auth("let-me-write");
    assert_eq!(send(cancel).await.0, 202);
}
