//! The `deploy/` folder is checked against the real binaries, so a renamed flag or a typo in a
//! manifest fails here instead of on somebody's cluster:
//!
//! * every Kubernetes YAML document parses and has `apiVersion`, `kind` and `metadata.name`;
//! * the agent DaemonSet sees the host's processes (`hostPID`) and may trace them (`SYS_PTRACE`,
//!   and `PERFMON` and `IPC_LOCK` for perf events and their locked rings; every other
//!   capability dropped), takes its id from the node name and advertises its pod IP;
//! * the coordinator Deployment keeps `--data-dir` on a PersistentVolumeClaim and its Service
//!   exposes the ports the flags bind;
//! * the systemd units grant the agent `CAP_SYS_PTRACE` and `CAP_PERFMON` and nothing more
//!   (locked memory for perf rings through `LimitMEMLOCK`), the coordinator nothing;
//! * every `--flag` and every `FLAMEGRID_*` variable used anywhere in `deploy/` appears in the
//!   `--help` output of the binary it is meant for (the real binary, run as a process);
//! * the files ship closed (issue 12): every listener they bind to a non-loopback address has
//!   its credential wired (REST: `--rest-token-file` or `--read-only`; the registry and the
//!   agent: `--token-file` or mutual TLS), from a file the README's install step creates
//!   (systemd) or from a Secret volume the README says how to create (Kubernetes); nothing sets
//!   `--insecure`. A future edit that comments a token out fails here, not on a cluster;
//! * the replicated overlay (`deploy/kubernetes-replicated`, issue 16), rendered the way
//!   `kubectl apply -k` renders it (the strategic merge patches applied here, and checked against
//!   `kubectl kustomize` where kubectl is installed), passes the same checks, runs several
//!   coordinator replicas with rolling updates and no volume, and takes the database URL from a
//!   Secret: `FLAMEGRID_DATABASE_URL` by `secretKeyRef`, never a literal, never `--database-url`
//!   on any command line in `deploy/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of every manifest of the base (`deploy/kubernetes`), with the file it
/// came from.
fn manifests() -> Vec<(String, Value)> {
    manifests_in(&deploy_dir().join("kubernetes"))
}

/// The YAML documents of `text` (empty ones, e.g. after a trailing `---`, skipped).
fn documents_of(name: &str, text: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = <Value as serde::Deserialize>::deserialize(document)
            .unwrap_or_else(|e| panic!("{name}: document {i} does not parse: {e}"));
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
}

/// Every YAML document of the `.yaml` files directly in `dir`, with the file it came from.
fn manifests_in(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for value in documents_of(&name, &text) {
            documents.push((name.clone(), value));
        }
    }
    documents
}

fn kind<'a>(documents: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The value that follows `flag` in an argument list.
fn arg_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Every document has `apiVersion`, `kind` and (but a Kustomization) `metadata.name`.
fn assert_documents_name_themselves(documents: &[(String, Value)]) {
    for (file, d) in documents {
        assert!(
            d["apiVersion"].as_str().is_some_and(|s| !s.is_empty()),
            "{file}: a document without apiVersion"
        );
        assert!(
            d["kind"].as_str().is_some_and(|s| !s.is_empty()),
            "{file}: a document without kind"
        );
        if d["kind"].as_str() != Some("Kustomization") {
            assert!(
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{file}: a document without metadata.name"
            );
        }
    }
}

#[test]
fn every_manifest_document_parses_and_names_itself() {
    let documents = manifests();
    assert_documents_name_themselves(&documents);
    for wanted in [
        "Namespace",
        "DaemonSet",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
    ] {
        assert_eq!(kind(&documents, wanted).len(), 1, "exactly one {wanted}");
    }
    // The kustomization lists every other manifest, so `kubectl apply -k` deploys everything.
    let kustomization = kind(&documents, "Kustomization");
    let listed = strings(&kustomization[0]["resources"]);
    for (file, d) in &documents {
        if d["kind"].as_str() != Some("Kustomization") {
            assert!(
                listed.contains(file),
                "kustomization.yaml does not list {file}"
            );
        }
    }
}

#[test]
fn agent_daemonset_sees_and_may_trace_host_processes() {
    let documents = manifests();
    let daemonset = kind(&documents, "DaemonSet")[0];
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"].as_bool(),
        Some(true),
        "the agent must see the node's processes"
    );
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let agent = &containers[0];
    let capabilities = &agent["securityContext"]["capabilities"];
    assert_eq!(
        strings(&capabilities["add"]),
        ["SYS_PTRACE", "PERFMON", "IPC_LOCK"],
        "SYS_PTRACE, PERFMON and IPC_LOCK (perf rings are locked memory) and nothing more"
    );
    assert_eq!(strings(&capabilities["drop"]), ["ALL"]);
    assert_eq!(
        agent["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert!(
        agent["securityContext"]["privileged"].as_bool() != Some(true),
        "never privileged"
    );

    let args = [strings(&agent["command"]), strings(&agent["args"])].concat();
    assert!(
        args.iter().any(|a| a == "run"),
        "the agent runs `flamegrid-agent run`"
    );
    let env = agent["env"].as_sequence().unwrap();
    let field_of = |variable: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(variable))
            .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
            .map(str::to_string)
    };
    // --id is the node's name, --advertise the pod's IP, both from the downward API.
    let id = arg_after(&args, "--id").expect("--id");
    let id_var = id.trim_start_matches("$(").trim_end_matches(')');
    assert_eq!(
        field_of(id_var).as_deref(),
        Some("spec.nodeName"),
        "--id {id}"
    );
    let advertise = arg_after(&args, "--advertise").expect("--advertise");
    let ip_var = advertise
        .split("$(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("--advertise uses a variable");
    assert_eq!(
        field_of(ip_var).as_deref(),
        Some("status.podIP"),
        "--advertise {advertise}"
    );
    // The coordinator address points at the Service.
    let service = kind(&documents, "Service")[0];
    let coordinator = arg_after(&args, "--coordinator").expect("--coordinator");
    assert!(
        coordinator.contains(service["metadata"]["name"].as_str().unwrap()),
        "--coordinator {coordinator}"
    );
}

#[test]
fn coordinator_keeps_its_data_on_a_volume_behind_a_service() {
    let documents = manifests();
    let deployment = kind(&documents, "Deployment")[0];
    assert_eq!(
        deployment["spec"]["replicas"].as_u64(),
        Some(1),
        "one writer per database"
    );
    assert_eq!(
        deployment["spec"]["strategy"]["type"].as_str(),
        Some("Recreate")
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = [strings(&container["command"]), strings(&container["args"])].concat();

    // --data-dir is a mount of a volume backed by the PersistentVolumeClaim.
    let data_dir = arg_after(&args, "--data-dir").expect("--data-dir");
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(data_dir.as_str()))
        .expect("--data-dir is a volume mount");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("a PersistentVolumeClaim volume");
    assert_eq!(
        kind(&documents, "PersistentVolumeClaim")[0]["metadata"]["name"].as_str(),
        Some(claim)
    );

    // The Service selects these pods and exposes the ports the flags bind.
    let service = kind(&documents, "Service")[0];
    let selector = service["spec"]["selector"].as_mapping().unwrap();
    let labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "Service selector {k:?}");
    }
    let container_ports: Vec<(String, u64)> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    for flag in ["--rest-addr", "--rpc-addr"] {
        let addr = arg_after(&args, flag).unwrap_or_else(|| panic!("{flag}"));
        assert!(
            addr.starts_with("0.0.0.0:"),
            "{flag} {addr} must listen on the pod's interfaces"
        );
        let port: u64 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let (name, _) = container_ports
            .iter()
            .find(|(_, p)| *p == port)
            .unwrap_or_else(|| panic!("{flag}: no containerPort {port}"));
        let exposed = service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| {
                p["targetPort"].as_str() == Some(name.as_str())
                    || p["targetPort"].as_u64() == Some(port)
            });
        assert!(exposed, "the Service does not expose {flag} (port {port})");
    }
}

/// `key=value` lines of a systemd unit's `[Service]` section (keys may repeat).
fn unit_service_settings(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut settings = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') && !line.starts_with(';')
        {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {line}"));
            settings.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    settings
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn systemd_units_grant_the_agent_ptrace_and_nothing_more() {
    let agent = unit_service_settings(&read("systemd/flamegrid-agent.service"));
    assert_eq!(
        setting(&agent, "AmbientCapabilities"),
        ["CAP_SYS_PTRACE CAP_PERFMON"]
    );
    assert_eq!(
        setting(&agent, "CapabilityBoundingSet"),
        ["CAP_SYS_PTRACE CAP_PERFMON"]
    );
    assert_eq!(setting(&agent, "NoNewPrivileges"), ["yes"]);
    // perf rings are locked memory: room for the agent's default ring cap (256 MiB) plus the
    // kernel's default 8 MiB, through the rlimit rather than CAP_IPC_LOCK.
    assert_eq!(setting(&agent, "LimitMEMLOCK"), ["264M"]);
    assert!(
        setting(&agent, "User").iter().all(|u| *u != "root"),
        "the agent does not run as root"
    );
    assert_eq!(
        setting(&agent, "EnvironmentFile").len(),
        1,
        "settings come from an EnvironmentFile"
    );
    assert!(setting(&agent, "ExecStart")[0].starts_with("/usr/local/bin/flamegrid-agent run"));
    // Options that would silently break sampling.
    for (key, forbidden) in [
        ("ProtectProc", "invisible"),
        ("ProtectProc", "noaccess"),
        ("ProcSubset", "pid"),
        ("PrivateUsers", "yes"),
    ] {
        assert!(
            !setting(&agent, key).contains(&forbidden),
            "{key}={forbidden} breaks ptrace or /proc reading"
        );
    }
    let filters = setting(&agent, "SystemCallFilter").join(" ");
    assert!(
        filters.is_empty() || filters.contains("@debug") || filters.contains("ptrace"),
        "the syscall filter must allow ptrace"
    );

    let coordinator = unit_service_settings(&read("systemd/flamegrid-coordinator.service"));
    assert_eq!(
        setting(&coordinator, "CapabilityBoundingSet"),
        [""],
        "the coordinator needs no capability"
    );
    assert!(
        setting(&coordinator, "AmbientCapabilities")
            .iter()
            .all(|c| c.is_empty())
    );
    assert_eq!(setting(&coordinator, "EnvironmentFile").len(), 1);
    assert!(
        setting(&coordinator, "ExecStart")[0].starts_with("/usr/local/bin/flamegrid-coordinator")
    );
}

/// When systemd's own checker is installed, it must accept both units apart from the binaries
/// not being installed on this machine.
#[test]
fn systemd_analyze_accepts_the_units_when_available() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed; skipping its check");
        return;
    };
    assert!(version.status.success());
    for unit in ["flamegrid-agent.service", "flamegrid-coordinator.service"] {
        let output = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(deploy_dir().join("systemd").join(unit))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.contains("is not executable: No such file or directory"))
            .filter(|l| {
                !l.contains("bus") && !l.contains("System has not been booted with systemd")
            })
            .collect();
        assert!(
            problems.is_empty(),
            "systemd-analyze verify {unit}:\n{}",
            problems.join("\n")
        );
    }
}

/// The agent binary of this build (see [`flamegrid_testkit::executable`]).
fn agent_binary() -> PathBuf {
    flamegrid_testkit::executable("flamegrid-agent")
}

fn help(binary: &Path, args: &[&str]) -> String {
    let output = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} {args:?} --help failed: {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Every `--flag` in the lines of `text` that are not comments (comments quote other tools'
/// commands, such as `systemctl enable --now`).
fn flags_in(text: &str) -> BTreeSet<String> {
    let flag = regex::Regex::new(r"(?:^|[\s\[\x22'])(--[a-z][a-z0-9-]*)").unwrap();
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| {
            flag.captures_iter(line)
                .map(|c| c[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every `FLAMEGRID_*` variable in `text`, commented-out examples included.
fn variables_in(text: &str) -> BTreeSet<String> {
    let variable = regex::Regex::new(r"\bFLAMEGRID_[A-Z0-9_]+\b").unwrap();
    variable
        .find_iter(text)
        .map(|m| m.as_str().to_string())
        .collect()
}

#[test]
fn every_flag_and_variable_in_deploy_exists_in_the_binaries_help() {
    let coordinator_help = help(Path::new(env!("CARGO_BIN_EXE_flamegrid-coordinator")), &[]);
    let agent = agent_binary();
    let agent_help = format!("{}\n{}", help(&agent, &[]), help(&agent, &["run"]));

    // Which binary each file configures (the Containerfile's `--locked` is cargo's, so it is
    // not listed).
    let files: [(&str, &str); 12] = [
        ("systemd/flamegrid-agent.service", "agent"),
        ("systemd/agent.env", "agent"),
        ("kubernetes/agent.yaml", "agent"),
        ("systemd/flamegrid-coordinator.service", "coordinator"),
        ("systemd/coordinator.env", "coordinator"),
        ("kubernetes/coordinator.yaml", "coordinator"),
        ("kubernetes/namespace.yaml", "coordinator"),
        ("kubernetes/kustomization.yaml", "coordinator"),
        ("kubernetes-replicated/kustomization.yaml", "coordinator"),
        (
            "kubernetes-replicated/coordinator-replicated.yaml",
            "coordinator",
        ),
        (
            "kubernetes-replicated/disruption-budget.yaml",
            "coordinator",
        ),
        ("kubernetes-replicated/postgres.yaml", "coordinator"),
    ];
    // Every file of the Kubernetes folders is in the list above.
    for sub in ["kubernetes", "kubernetes-replicated"] {
        for entry in std::fs::read_dir(deploy_dir().join(sub)).unwrap() {
            let name = format!("{sub}/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(
                files.iter().any(|(f, _)| *f == name),
                "{name} is not checked against a binary's --help"
            );
        }
    }
    let mut checked = 0;
    for (file, binary) in files {
        let text = read(file);
        let help_text = if binary == "agent" {
            &agent_help
        } else {
            &coordinator_help
        };
        for flag in flags_in(&text) {
            assert!(
                help_text
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .any(|w| w == flag),
                "{file} uses {flag}, which `flamegrid-{binary} --help` does not list"
            );
            checked += 1;
        }
        for variable in variables_in(&text) {
            assert!(
                help_text.contains(&format!("env: {variable}="))
                    || help_text.contains(&format!("env: {variable}]")),
                "{file} sets {variable}, which `flamegrid-{binary} --help` does not list as a flag's variable"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 15,
        "only {checked} flags and variables found: is the parsing broken?"
    );
}

// ---- shipped closed --------------------------------------------------------------------------

/// One deployed process's settings, flag name (without `--`) → value, from its arguments and
/// its `FLAMEGRID_*` environment, the way the binary reads them; `"true"` for a bare switch.
type Settings = BTreeMap<String, String>;

fn settings_from(args: &[String], env: &[(String, String)]) -> Settings {
    let mut settings = Settings::new();
    for (name, value) in env {
        if let Some(flag) = name.strip_prefix("FLAMEGRID_") {
            settings.insert(flag.to_ascii_lowercase().replace('_', "-"), value.clone());
        }
    }
    let mut i = 0;
    while i < args.len() {
        if let Some(flag) = args[i].strip_prefix("--") {
            if let Some((flag, value)) = flag.split_once('=') {
                settings.insert(flag.to_string(), value.to_string());
            } else if args.get(i + 1).is_some_and(|next| !next.starts_with("--")) {
                settings.insert(flag.to_string(), args[i + 1].clone());
                i += 1;
            } else {
                settings.insert(flag.to_string(), "true".to_string());
            }
        }
        i += 1;
    }
    settings
}

/// The listeners of `binary` under `settings` that other hosts can reach without credentials
/// (the rule of DESIGN.md, "Secure defaults"), as `flag address` strings, plus any `--insecure`.
fn open_listeners(binary: &str, settings: &Settings) -> Vec<String> {
    let has = |flag: &str| settings.contains_key(flag);
    let mutual_tls = has("tls-cert") && has("tls-key") && has("tls-ca");
    let listeners: Vec<(&str, &str, bool)> = match binary {
        "coordinator" => vec![
            (
                "rest-addr",
                "127.0.0.1:8081",
                has("rest-token-file") || settings.get("read-only").is_some_and(|v| v == "true"),
            ),
            (
                "rpc-addr",
                "127.0.0.1:6123",
                has("token-file") || mutual_tls,
            ),
        ],
        "agent" => vec![("listen", "0.0.0.0:6122", has("token-file") || mutual_tls)],
        other => panic!("unknown binary {other}"),
    };
    let mut open = Vec::new();
    if has("insecure") {
        open.push("--insecure".to_string());
    }
    for (flag, default, guarded) in listeners {
        let addr = settings.get(flag).map(String::as_str).unwrap_or(default);
        let addr: std::net::SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("--{flag} {addr}: {e}"));
        if !addr.ip().is_loopback() && !guarded {
            open.push(format!("--{flag} {addr}"));
        }
    }
    open
}

/// The files credentials are read from under `settings`.
fn credential_files(settings: &Settings) -> Vec<String> {
    [
        "token-file",
        "rest-token-file",
        "tls-cert",
        "tls-key",
        "tls-ca",
    ]
    .iter()
    .filter_map(|flag| settings.get(*flag).cloned())
    .collect()
}

/// `KEY=value` lines of an EnvironmentFile (comments and blank lines skipped).
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=value: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap()
}

/// The rule itself catches an open door: a guard that cannot fail guards nothing.
#[test]
fn the_open_listener_rule_catches_an_open_door() {
    let open = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        open_listeners("coordinator", &settings_from(&args, &[]))
    };
    assert!(open(&[]).is_empty(), "loopback defaults need nothing");
    assert_eq!(
        open(&["--rest-addr", "0.0.0.0:8081"]),
        ["--rest-addr 0.0.0.0:8081"]
    );
    assert!(open(&["--rest-addr", "0.0.0.0:8081", "--read-only"]).is_empty());
    assert_eq!(
        open(&[
            "--rpc-addr",
            "[::]:6123",
            "--tls-cert",
            "c",
            "--tls-key",
            "k"
        ]),
        ["--rpc-addr [::]:6123"],
        "TLS without a CA checks no client"
    );
    assert_eq!(open(&["--insecure"]), ["--insecure"]);
    let agent = open_listeners("agent", &Settings::new());
    assert_eq!(
        agent,
        ["--listen 0.0.0.0:6122"],
        "the agent's default is open"
    );
}

#[test]
fn systemd_files_ship_with_every_open_listener_guarded() {
    let readme = readme();
    let mut token_paths = BTreeMap::new();
    for (binary, unit, env) in [
        (
            "coordinator",
            "flamegrid-coordinator.service",
            "coordinator.env",
        ),
        ("agent", "flamegrid-agent.service", "agent.env"),
    ] {
        let settings_of_unit = unit_service_settings(&read(&format!("systemd/{unit}")));
        let exec: Vec<String> = setting(&settings_of_unit, "ExecStart")[0]
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect();
        let env_vars = env_file(&read(&format!("systemd/{env}")));
        let settings = settings_from(&exec, &env_vars);
        let open = open_listeners(binary, &settings);
        assert!(open.is_empty(), "{unit} + {env} ship open: {open:?}");
        // Every credential file is one the README's install step creates.
        let files = credential_files(&settings);
        assert!(!files.is_empty(), "{env} wires no credential");
        for file in files {
            assert!(
                readme.contains(&file),
                "{env} reads {file}, which README.md's install step does not create"
            );
        }
        token_paths.insert(binary, settings.get("token-file").cloned());
    }
    assert_eq!(
        token_paths["coordinator"], token_paths["agent"],
        "agents and the coordinator must read the same shared token"
    );
}

#[test]
fn kubernetes_manifests_ship_with_every_open_listener_guarded() {
    assert_workloads_ship_guarded(&manifests());
}

/// The coordinator Deployment and the agent DaemonSet of `documents` open no listener without
/// its credential, and every credential file is an item of a Secret the README creates.
fn assert_workloads_ship_guarded(documents: &[(String, Value)]) {
    let readme = readme();
    let workloads = [
        ("coordinator", kind(documents, "Deployment")[0]),
        ("agent", kind(documents, "DaemonSet")[0]),
    ];
    let mut secrets = BTreeSet::new();
    for (binary, workload) in workloads {
        let pod = &workload["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args = [strings(&container["command"]), strings(&container["args"])].concat();
        let env: Vec<(String, String)> = container["env"]
            .as_sequence()
            .map(|vars| {
                vars.iter()
                    .filter_map(|v| {
                        Some((
                            v["name"].as_str()?.to_string(),
                            v["value"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let settings = settings_from(&args, &env);
        let open = open_listeners(binary, &settings);
        assert!(open.is_empty(), "the {binary} ships open: {open:?}");
        let files = credential_files(&settings);
        assert!(!files.is_empty(), "the {binary} wires no credential");
        // Each credential file is an item of a Secret volume mounted at its directory.
        for file in files {
            let (dir, name) = file.rsplit_once('/').unwrap();
            let mount = container["volumeMounts"]
                .as_sequence()
                .and_then(|m| m.iter().find(|m| m["mountPath"].as_str() == Some(dir)))
                .unwrap_or_else(|| panic!("the {binary}'s {file}: no volume mounted at {dir}"));
            let volume = pod["volumes"]
                .as_sequence()
                .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
                .unwrap_or_else(|| panic!("the {binary}'s {file}: the mounted volume"));
            let secret = &volume["secret"];
            let secret_name = secret["secretName"]
                .as_str()
                .unwrap_or_else(|| panic!("the {binary}'s {file} is not from a Secret"));
            let items = secret["items"].as_sequence().cloned().unwrap_or_default();
            assert!(
                items.is_empty() || items.iter().any(|i| i["path"].as_str() == Some(name)),
                "the {binary}'s {file}: the Secret's items do not include {name}"
            );
            for item in &items {
                secrets.insert((
                    secret_name.to_string(),
                    item["key"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    // The README says how to create each Secret with each key used.
    for (secret, key) in secrets {
        assert!(
            readme.contains(&format!("create secret generic {secret}")),
            "README.md does not say how to create the Secret {secret}"
        );
        assert!(
            readme.contains(&format!("--from-literal={key}=")),
            "README.md does not create the key {key} of {secret}"
        );
    }
}

/// No file in `deploy/` turns the refusal off (comments may mention it).
#[test]
fn nothing_in_deploy_ships_insecure() {
    let mut files = vec![deploy_dir().join("Containerfile")];
    for sub in ["systemd", "kubernetes", "kubernetes-replicated"] {
        for entry in std::fs::read_dir(deploy_dir().join(sub)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with('#') {
                continue;
            }
            assert!(
                !code.to_ascii_lowercase().contains("insecure"),
                "{}: {line}",
                file.display()
            );
        }
    }
}

// ---- replicated coordinators (issue 16) ------------------------------------------------------

/// The folder of the replicated overlay.
fn replicated_dir() -> PathBuf {
    deploy_dir().join("kubernetes-replicated")
}

/// What `kubectl kustomize dir` renders, for the features `deploy/` uses: `resources` (files,
/// or folders with a kustomization of their own), `patches` (strategic merge patches from a
/// `path` or inline, `$patch: delete` of a whole resource), and `namespace`. Documents carry the
/// file they came from.
fn render(dir: &Path) -> Vec<(String, Value)> {
    let kustomization = documents_of("kustomization.yaml", &read_in(dir, "kustomization.yaml"));
    let kustomization = &kustomization[0];
    let mut documents = Vec::new();
    for resource in strings(&kustomization["resources"]) {
        let path = dir.join(&resource);
        if path.is_dir() {
            documents.extend(render(&path));
        } else {
            for d in documents_of(&resource, &read_in(dir, &resource)) {
                documents.push((resource.clone(), d));
            }
        }
    }
    for patch in kustomization["patches"]
        .as_sequence()
        .unwrap_or(&Vec::new())
    {
        let patches = match (patch["path"].as_str(), patch["patch"].as_str()) {
            (Some(path), None) => documents_of(path, &read_in(dir, path)),
            (None, Some(inline)) => documents_of("an inline patch", inline),
            _ => panic!("a patch with neither path nor patch (or both): {patch:?}"),
        };
        for patch in patches {
            let same = |d: &Value| {
                d["kind"] == patch["kind"] && d["metadata"]["name"] == patch["metadata"]["name"]
            };
            let i = documents
                .iter()
                .position(|(_, d)| same(d))
                .unwrap_or_else(|| panic!("a patch of nothing: {patch:?}"));
            if patch["$patch"].as_str() == Some("delete") {
                documents.remove(i);
            } else {
                documents[i].1 = merge(&documents[i].1, &patch, "");
            }
        }
    }
    if let Some(namespace) = kustomization["namespace"].as_str() {
        for (_, d) in documents.iter_mut() {
            if d["kind"].as_str() != Some("Namespace") {
                d["metadata"]["namespace"] = Value::from(namespace);
            }
        }
    }
    documents
}

fn read_in(dir: &Path, file: &str) -> String {
    let path = dir.join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The key that identifies an item of the list `field` in a strategic merge patch (Kubernetes'
/// `patchMergeKey`), for the lists `deploy/` patches; other lists are replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// `patch` merged into `base` the way a strategic merge patch is (`field` names `base`): maps
/// merge key by key (`null` deletes), keyed lists merge item by item (`$patch: delete` removes
/// one, new items go first), anything else is replaced.
fn merge(base: &Value, patch: &Value, field: &str) -> Value {
    match (base, patch) {
        (Value::Mapping(base), Value::Mapping(patch)) => {
            let mut merged = base.clone();
            for (k, v) in patch {
                if k.as_str() == Some("$patch") {
                    continue;
                }
                if v.is_null() {
                    merged.remove(k);
                } else if let Some(old) = base.get(k) {
                    merged.insert(k.clone(), merge(old, v, k.as_str().unwrap_or("")));
                } else {
                    merged.insert(k.clone(), v.clone());
                }
            }
            Value::Mapping(merged)
        }
        (Value::Sequence(base), Value::Sequence(patch)) if merge_key(field).is_some() => {
            let key = merge_key(field).unwrap();
            let mut merged = base.clone();
            let mut added = Vec::new();
            for item in patch {
                let at = merged.iter().position(|b| b[key] == item[key]);
                match (at, item["$patch"].as_str()) {
                    (Some(i), Some("delete")) => {
                        merged.remove(i);
                    }
                    (Some(i), _) => merged[i] = merge(&merged[i], item, ""),
                    (None, _) => added.push(item.clone()),
                }
            }
            Value::Sequence(added.into_iter().chain(merged).collect())
        }
        _ => patch.clone(),
    }
}

fn env_entry<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

/// Every container of every workload of `documents`, with its workload's name.
fn containers(documents: &[(String, Value)]) -> Vec<(String, &Value)> {
    documents
        .iter()
        .flat_map(|(_, d)| {
            let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
            d["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .map(|c| c.iter().map(|c| (name.clone(), c)).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn the_strategic_merge_of_the_test_merges_as_kubernetes_does() {
    let yaml = |text: &str| documents_of("test", text).remove(0);
    let base = yaml(
        "spec: {replicas: 1, strategy: {type: Recreate}, template: {spec: {
           containers: [{name: c, args: [a, b], env: [{name: X, value: '1'}]}],
           volumes: [{name: data, persistentVolumeClaim: {claimName: p}}, {name: t, secret: {}}]}}}",
    );
    let patch = yaml(
        "spec: {replicas: 3, strategy: {type: RollingUpdate}, template: {spec: {
           containers: [{name: c, args: [z], env: [{name: Y, value: '2'}]}],
           volumes: [{name: data, persistentVolumeClaim: null, emptyDir: {}}, {name: t, $patch: delete}]}}}",
    );
    let merged = merge(&base, &patch, "");
    let spec = &merged["spec"]["template"]["spec"];
    assert_eq!(merged["spec"]["replicas"].as_u64(), Some(3));
    assert_eq!(
        merged["spec"]["strategy"]["type"].as_str(),
        Some("RollingUpdate")
    );
    assert_eq!(
        strings(&spec["containers"][0]["args"]),
        ["z"],
        "plain lists are replaced"
    );
    let env: Vec<&str> = spec["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["Y", "X"], "keyed lists merge, new items first");
    let volumes = spec["volumes"].as_sequence().unwrap();
    assert_eq!(volumes.len(), 1, "$patch: delete removes an item");
    assert!(volumes[0]["persistentVolumeClaim"].is_null() && volumes[0]["emptyDir"].is_mapping());
}

/// Where kubectl is installed, its own rendering of the overlay is the one the tests check.
#[test]
fn kubectl_renders_the_replicated_overlay_as_the_tests_do() {
    let Ok(output) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(replicated_dir())
        .output()
    else {
        eprintln!("kubectl is not installed; skipping the comparison with `kubectl kustomize`");
        return;
    };
    assert!(
        output.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs = documents_of(
        "kubectl kustomize",
        &String::from_utf8(output.stdout).unwrap(),
    );
    let ours = render(&replicated_dir());
    let id = |d: &Value| {
        format!(
            "{}/{}",
            d["kind"].as_str().unwrap_or(""),
            d["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    let mut their_ids: Vec<String> = theirs.iter().map(id).collect();
    let mut our_ids: Vec<String> = ours.iter().map(|(_, d)| id(d)).collect();
    their_ids.sort();
    our_ids.sort();
    assert_eq!(their_ids, our_ids, "the same resources");
    for d in &theirs {
        let (_, mine) = ours.iter().find(|(_, o)| id(o) == id(d)).unwrap();
        for (what, a, b) in [
            (
                "spec.replicas",
                &d["spec"]["replicas"],
                &mine["spec"]["replicas"],
            ),
            (
                "spec.strategy",
                &d["spec"]["strategy"],
                &mine["spec"]["strategy"],
            ),
            (
                "metadata.namespace",
                &d["metadata"]["namespace"],
                &mine["metadata"]["namespace"],
            ),
            (
                "affinity",
                &d["spec"]["template"]["spec"]["affinity"],
                &mine["spec"]["template"]["spec"]["affinity"],
            ),
        ] {
            assert_eq!(a, b, "{}: {what}", id(d));
        }
        let containers = |d: &Value| d["spec"]["template"]["spec"]["containers"].clone();
        let (their_containers, my_containers) = (containers(d), containers(mine));
        for (i, c) in their_containers
            .as_sequence()
            .into_iter()
            .flatten()
            .enumerate()
        {
            for field in [
                "command",
                "args",
                "env",
                "volumeMounts",
                "ports",
                "readinessProbe",
            ] {
                assert_eq!(
                    c[field],
                    my_containers[i][field],
                    "{}: container {i} {field}",
                    id(d)
                );
            }
        }
        // Volumes by name and source (a secret's octal defaultMode reads differently in YAML 1.1).
        let volumes = |d: &Value| -> Vec<String> {
            d["spec"]["template"]["spec"]["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|v| {
                    let keys: Vec<String> = v
                        .as_mapping()
                        .unwrap()
                        .keys()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect();
                    format!("{} {:?}", v["name"].as_str().unwrap_or(""), {
                        let mut keys = keys;
                        keys.sort();
                        keys
                    })
                })
                .collect()
        };
        assert_eq!(volumes(d), volumes(mine), "{}: volumes", id(d));
    }
}

#[test]
fn replicated_overlay_runs_interchangeable_coordinators_without_a_volume() {
    let documents = render(&replicated_dir());
    assert_documents_name_themselves(&documents);
    assert_documents_name_themselves(&manifests_in(&replicated_dir()));
    // Every file of the folder is used by its kustomization.
    let kustomization = documents_of(
        "kustomization.yaml",
        &read_in(&replicated_dir(), "kustomization.yaml"),
    )
    .remove(0);
    let mut used = strings(&kustomization["resources"]);
    used.extend(
        kustomization["patches"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|p| p["path"].as_str().map(String::from)),
    );
    for entry in std::fs::read_dir(replicated_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "kustomization.yaml" || used.contains(&name),
            "kustomization.yaml does not use {name}"
        );
    }
    for wanted in [
        "Namespace",
        "DaemonSet",
        "Deployment",
        "StatefulSet",
        "PodDisruptionBudget",
    ] {
        assert_eq!(kind(&documents, wanted).len(), 1, "exactly one {wanted}");
    }
    assert!(
        kind(&documents, "PersistentVolumeClaim").is_empty(),
        "the coordinators keep nothing on a volume"
    );

    let deployment = kind(&documents, "Deployment")[0];
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 2, "replicas: {replicas}");
    assert_eq!(
        deployment["spec"]["strategy"]["type"].as_str(),
        Some("RollingUpdate"),
        "replicas are replaced one at a time"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    for volume in pod["volumes"].as_sequence().unwrap() {
        assert!(
            volume["persistentVolumeClaim"].is_null(),
            "a volume on a claim: {volume:?}"
        );
    }
    assert!(
        pod["affinity"]["podAntiAffinity"].is_mapping(),
        "replicas spread over nodes"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/config"),
        "ready once it serves REST"
    );
    // The budget and the Service select these pods.
    let labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    for selector in [
        &kind(&documents, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"],
        &kind(&documents, "Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == deployment["metadata"]["name"])
            .expect("a Service named as the Deployment")["spec"]["selector"],
    ] {
        for (k, v) in selector.as_mapping().unwrap() {
            assert_eq!(labels.get(k), Some(v), "selector {k:?}");
        }
    }

    // The same guards as the single coordinator, and the agents point at the Service.
    assert_workloads_ship_guarded(&documents);
    let agent =
        kind(&documents, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0].clone();
    let args = [strings(&agent["command"]), strings(&agent["args"])].concat();
    let coordinator = arg_after(&args, "--coordinator").expect("--coordinator");
    assert!(
        coordinator.contains("flamegrid-coordinator"),
        "--coordinator {coordinator}"
    );
}

#[test]
fn the_database_url_comes_from_a_secret_and_never_from_a_command_line() {
    let documents = render(&replicated_dir());
    let readme = readme();
    let deployment = kind(&documents, "Deployment")[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let url = env_entry(container, "FLAMEGRID_DATABASE_URL").expect("FLAMEGRID_DATABASE_URL");
    assert!(url["value"].is_null(), "never a literal URL: {url:?}");
    let secret = &url["valueFrom"]["secretKeyRef"];
    let (name, key) = (
        secret["name"].as_str().expect("a secretKeyRef"),
        secret["key"].as_str().unwrap(),
    );
    assert!(
        readme.contains(&format!("create secret generic {name}"))
            && readme.contains(&format!("--from-literal={key}=")),
        "README.md does not say how to create the Secret {name} with the key {key}"
    );

    // The PostgreSQL for trying it out takes its password from the same Secret, and its Service
    // is the host the README's URL names.
    let postgres = kind(&documents, "StatefulSet")[0];
    let password = env_entry(
        &postgres["spec"]["template"]["spec"]["containers"][0],
        "POSTGRES_PASSWORD",
    )
    .expect("POSTGRES_PASSWORD");
    assert_eq!(
        password["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some(name)
    );
    let service = postgres["spec"]["serviceName"].as_str().unwrap();
    assert!(
        kind(&documents, "Service")
            .iter()
            .any(|s| s["metadata"]["name"].as_str() == Some(service)),
        "no Service {service}"
    );
    assert!(
        readme.contains(&format!("@{service}:5432/")),
        "README.md's database URL does not name the Service {service}"
    );

    // No command line anywhere in deploy/ carries the URL: not in a workload's args ...
    for (workload, container) in containers(&documents) {
        let args = [strings(&container["command"]), strings(&container["args"])].concat();
        for arg in args {
            let url = arg.contains("postgres://")
                || arg.contains("postgresql://")
                || arg.contains("password=");
            assert!(
                !arg.starts_with("--database-url") && !url,
                "{workload}: {arg} on the command line"
            );
        }
    }
    // ... nor in a unit's ExecStart or any other line that is not a comment.
    for sub in ["systemd", "kubernetes", "kubernetes-replicated"] {
        for entry in std::fs::read_dir(deploy_dir().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let code = line.trim_start();
                assert!(
                    code.starts_with('#') || !code.contains("--database-url"),
                    "{}: {line}",
                    path.display()
                );
                assert!(
                    code.starts_with('#') || !code.contains("postgres://"),
                    "{}: a database URL outside a comment: {line}",
                    path.display()
                );
            }
        }
    }
}
