//! What the console's page, Alertmanager and demo tests share beyond tests/common: the real
//! `emberwatch console` process with a users file, a real headless Chromium, and small HTTP
//! helpers (curl, as an operator's script would use).

#![allow(dead_code)]

pub mod browser;
pub mod console;
