//! No tenant starves another, and the smaller holes: quotas per hospital
//! and per key, calls and streams that send nothing, idle and half-open
//! connections, unauthenticated health watches, made-up keys, forged page
//! tokens, notes that hide their text, and hospital ids spelled two ways.
//! Each test is an attack that succeeded before these defences.

use tonic::Code;
use transplant_audit::wire::pb;

use crate::helpers::*;

/// A flag in review, ready to be closed with a note.
async fn flag_in_review(app: &TestApp, ext: &str) -> pb::Flag {
    submit(app, abo_incompatible(ext)).await.expect("flagged");
    let flag = all_flags(app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .find(|f| f.external_record_id == ext)
        .expect("a flag");
    app.audit
        .clone()
        .update_flag_status(pb::UpdateFlagStatusRequest {
            flag_id: flag.flag_id.clone(),
            status: pb::FlagStatus::InReview as i32,
            note: String::new(),
            etag: flag.etag.clone(),
        })
        .await
        .expect("in review")
        .into_inner()
        .flag
        .expect("the flag")
}

#[tokio::test]
async fn notes_that_reorder_or_hide_their_text_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let flag = flag_in_review(&app, "NOTE-1").await;
    let events = app.count("flag_events").await;
    for note in [
        // Shown as "confirmed: trafficking ruled out": the override reverses the rest.
        "confirmed: \u{202E}tuo delur gnikciffart",
        "\u{2066}dismissed\u{2069} per hospital",
        "ok\u{1b}[1A\u{1b}[2Kerased line",
        "line\rover",
        "\u{200B}\u{FEFF}",
        " \n\t ",
    ] {
        let status = app
            .audit
            .clone()
            .update_flag_status(pb::UpdateFlagStatusRequest {
                flag_id: flag.flag_id.clone(),
                status: pb::FlagStatus::Confirmed as i32,
                note: note.into(),
                etag: flag.etag.clone(),
            })
            .await
            .expect_err(note);
        assert_eq!(status.code(), Code::InvalidArgument, "{note:?}: {status:?}");
        assert_eq!(violated_fields(&status), ["note"], "{note:?}");
    }
    assert_eq!(app.count("flag_events").await, events, "no triage step");

    let mut amended = abo_incompatible("NOTE-1");
    amended.laterality = pb::Laterality::Right as i32;
    for reason in ["side \u{202D}corrected", "\u{2067}", "\u{00AD}\u{200D}"] {
        let status = amend(&app, amended.clone(), reason)
            .await
            .expect_err(reason);
        assert_eq!(status.code(), Code::InvalidArgument, "{reason:?}");
        assert_eq!(violated_fields(&status), ["reason"], "{reason:?}");
    }
    assert_eq!(app.count("record_versions").await, 0, "no amendment");

    // Prose with line breaks, tabs and other scripts still goes through.
    app.audit
        .clone()
        .update_flag_status(pb::UpdateFlagStatusRequest {
            flag_id: flag.flag_id.clone(),
            status: pb::FlagStatus::Confirmed as i32,
            note: "Konsil bestätigt:\n\tkeine Einwilligung (لا موافقة)".into(),
            etag: flag.etag.clone(),
        })
        .await
        .expect("a plain note");
    amend(&app, amended, "side corrected")
        .await
        .expect("a plain reason");
    app.stop().await;
}
