//! Selectors from the wire: the gRPC contract's `ThreadSelector` checked and turned into the
//! sampler's [`ThreadSelector`].
//!
//! The sampler knows nothing of gRPC; this is where a request's selector, written by whoever
//! can reach the agent, meets the sampler's bounds ([`MAX_TIDS`], [`MAX_THREAD_NAME_PATTERN`]).
//! Both the sampling service and registration (the selectors a heartbeat answer names) go
//! through it, so they refuse the same things with the same words.

use flamegrid_proto::v1;
use flamegrid_sampler::SamplerError;
use flamegrid_sampler::selection::{MAX_THREAD_NAME_PATTERN, MAX_TIDS, ProcessRef, ThreadSelector};

/// Converts and validates a selector from the wire. Bad input (no process, pid 0, an empty
/// process name, tid 0, too many tids, a bad or oversized regex) is an `InvalidArgument`
/// naming the selector's key.
pub fn selector_from_wire(sel: &v1::ThreadSelector) -> Result<ThreadSelector, SamplerError> {
    selector_from_wire_with(sel, &mut |pattern| {
        ThreadSelector::compile_thread_name(pattern)
    })
}

/// Every check of [`selector_from_wire`] except compiling the thread-name pattern
/// (only its length is checked): cheap enough to run on every request before it may take
/// a run slot. Returns the process the selector names.
pub fn check_selector(sel: &v1::ThreadSelector) -> Result<ProcessRef, SamplerError> {
    let bad = |what: String| {
        SamplerError::InvalidArgument(format!("selector {:?}: {what}", sel.subtask_key))
    };
    let process = match &sel.process {
        None => return Err(bad("names no process (set pid or process_name)".into())),
        Some(v1::thread_selector::Process::Pid(0)) => {
            return Err(bad("pid 0 is not a process".into()));
        }
        Some(v1::thread_selector::Process::Pid(pid)) => ProcessRef::Pid(*pid),
        Some(v1::thread_selector::Process::ProcessName(name)) => {
            if name.is_empty() || name.contains(['/', '\0', '\n']) {
                return Err(bad(format!("bad process name {name:?}")));
            }
            ProcessRef::Name(name.clone())
        }
    };
    if sel.tids.len() > MAX_TIDS {
        return Err(bad(format!(
            "{} tids given; at most {MAX_TIDS} allowed",
            sel.tids.len()
        )));
    }
    if sel.tids.contains(&0) {
        return Err(bad("tid 0 is not a thread".into()));
    }
    if sel.thread_name.len() > MAX_THREAD_NAME_PATTERN {
        return Err(bad(format!(
            "thread name pattern is {} bytes long; at most {MAX_THREAD_NAME_PATTERN} allowed",
            sel.thread_name.len()
        )));
    }
    Ok(process)
}

/// [`selector_from_wire`] with the pattern compiled by `compile` (e.g. a cache, so
/// that a request repeating one pattern compiles it once).
pub fn selector_from_wire_with(
    sel: &v1::ThreadSelector,
    compile: &mut dyn FnMut(&str) -> Result<regex::Regex, SamplerError>,
) -> Result<ThreadSelector, SamplerError> {
    let process = check_selector(sel)?;
    let thread_name = if sel.thread_name.is_empty() {
        None
    } else {
        Some(compile(&sel.thread_name).map_err(|e| {
            SamplerError::InvalidArgument(format!("selector {:?}: {e}", sel.subtask_key))
        })?)
    };
    Ok(ThreadSelector {
        process,
        tids: sel.tids.clone(),
        thread_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_selectors_are_validated() {
        use v1::thread_selector::Process;
        let ok = v1::ThreadSelector {
            subtask_key: "k".into(),
            process: Some(Process::Pid(5)),
            tids: vec![6],
            thread_name: "w.*".into(),
        };
        let sel = selector_from_wire(&ok).unwrap();
        assert_eq!(sel.process, ProcessRef::Pid(5));
        assert!(sel.selects(6, "worker") && !sel.selects(7, "worker") && !sel.selects(6, "x"));
        for bad in [
            v1::ThreadSelector {
                process: None,
                ..ok.clone()
            },
            v1::ThreadSelector {
                process: Some(Process::Pid(0)),
                ..ok.clone()
            },
            v1::ThreadSelector {
                process: Some(Process::ProcessName(String::new())),
                ..ok.clone()
            },
            v1::ThreadSelector {
                tids: vec![0],
                ..ok.clone()
            },
            v1::ThreadSelector {
                thread_name: "(".into(),
                ..ok.clone()
            },
        ] {
            let err = selector_from_wire(&bad).unwrap_err();
            assert!(matches!(err, SamplerError::InvalidArgument(_)), "{err}");
        }
    }
}
