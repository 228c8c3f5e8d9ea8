//! Everything the session shows goes through [`Session::emit`]: one line per reply, push, error
//! or event, human or JSON. It also counts what was shown, by id or event name, because that
//! count is what a script's `/wait` waits for; and [`Session::fail`] counts the failures that
//! make the exit status.

use std::io::Write;

use super::{now_ms, Session};
use crate::client::render::{self, Output};
use crate::protocol::ids;

impl Session {
    pub(super) fn emit(&mut self, out: Output) {
        let key = match &out {
            Output::Reply { id, .. } | Output::Push { id, .. } => Some(id.to_string()),
            Output::ServerError { .. } => Some(ids::ERROR.to_string()),
            Output::Event { event, .. } if *event != "wait" => Some((*event).to_string()),
            _ => None,
        };
        let line = if self.cfg.json {
            Some(render::json_line(&out))
        } else {
            render::human(&out, &self.viewer, now_ms() / 1000)
        };
        if let Some(line) = line {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout must not stop the session (nor panic): the output is lost anyway.
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
        if let Some(key) = key {
            *self.arrivals.entry(key).or_default() += 1;
            self.check_wait();
        }
    }

    pub(super) fn fail(&mut self, kind: &'static str, cmd: Option<&'static str>, message: String) {
        self.failures += 1;
        self.emit(Output::client_error(kind, cmd, message));
    }
}
