//! An error and its causes on one line, for messages that must say why.
//!
//! Errors from the libraries the coordinator talks through (tokio-postgres, hyper, tonic) say
//! only their outermost layer at the top ("db error", "client error (Connect)", "tcp connect
//! error"); the words a user can act on ("password authentication failed", "Connection
//! refused", "connection reset") sit further down the chain of sources. The database's errors
//! and the fan-out's failures both flatten the chain with [`error_chain`].

/// `e` and every cause under it on one line (`a: b: c`), each said once: a cause whose text is
/// already there (an error that prints its own causes) is left out, and line breaks become
/// spaces.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out.replace('\n', " ")
}
