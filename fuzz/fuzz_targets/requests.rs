//! Request parsing on arbitrary bodies: every request type either parses or is refused as
//! malformed, and never panics (the first byte picks the request type).
#![no_main]

use chat_zinx::protocol::messages::{self as m, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let _ = match which % 13 {
        0 => parse::<m::RegisterReq>(body).map(drop),
        1 => parse::<m::LoginReq>(body).map(drop),
        2 => parse::<m::TextReq>(body).map(drop),
        3 => parse::<m::HistoryReq>(body).map(drop),
        4 => parse::<m::CreateGroupReq>(body).map(drop),
        5 => parse::<m::GroupIdReq>(body).map(drop),
        6 => parse::<m::UpdateGroupReq>(body).map(drop),
        7 => parse::<m::SetRoleReq>(body).map(drop),
        8 => parse::<m::RemoveMemberReq>(body).map(drop),
        9 => parse::<m::GroupHistoryReq>(body).map(drop),
        10 => parse::<m::GroupTextReq>(body).map(drop),
        11 => parse::<m::HelloReq>(body).map(drop),
        _ => parse::<m::SyncReq>(body).map(drop),
    };
});
