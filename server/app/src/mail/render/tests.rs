use super::views::derived_colors;
use super::*;
use chrono::TimeZone;

fn brand(company: &str) -> Brand {
    Brand::new(company, None, "#aa0000", "Acme MSP")
}

fn session_view(company: &str, computer: &str) -> SessionMailView {
    SessionMailView {
        brand: brand(company),
        recipient_name: "Anna".to_owned(),
        computer_name: computer.to_owned(),
        when: "Tuesday, 3 March 2026 at 22:00 (Europe/Berlin)".to_owned(),
        time_zone: "Europe/Berlin".to_owned(),
        actions: vec![
            ActionView::planned(
                "7-Zip",
                PlannedChange::Upgrade {
                    from: Some("1.9.2"),
                    to: Some("1.10.0"),
                },
            ),
            ActionView::planned(
                "Firefox",
                PlannedChange::Install {
                    version: Some("1.10.0"),
                },
            ),
        ],
        show_actions: true,
        reboot: RebootExpectation::May,
        postpone_url: Some("https://upkeep.example/postpone/tok123".to_owned()),
        update_now_url: Some("https://upkeep.example/postpone/tok123?now=1".to_owned()),
        reboot_now_url: None,
        postpones_left: 3,
        postpone_hours: 24,
        result_summary: None,
        compliant: false,
        postpone_links: Vec::new(),
    }
}

fn page_view(state: PostponeState) -> PostponePageView {
    PostponePageView {
        brand: brand("Contoso"),
        state: state.into(),
        computer_name: "PC-42".to_owned(),
        when: "Tuesday, 3 March 2026 at 22:00 (Europe/Berlin)".to_owned(),
        new_when: Some("Wednesday, 4 March 2026 at 22:00 (Europe/Berlin)".to_owned()),
        actions: vec![ActionView::planned("7-Zip", PlannedChange::RunTask)],
        show_actions: true,
        reboot: RebootExpectation::None,
        postpones_left: 1,
        postpone_hours: 24,
        allow_update_now: true,
        message: None,
    }
}

#[test]
fn every_builtin_template_compiles_and_renders() {
    let t = Templates::load(None).expect("built-in templates load");
    for &(file, kind, _) in BUILTIN {
        let name = registry_name(file, kind);
        let registered = match kind {
            Kind::Html => t.html.has_template(&name),
            Kind::Text => t.text.has_template(&name),
            Kind::Partial => t.origins.contains_key(&name),
        };
        assert!(registered, "{file} is registered as {name}");
    }
    for kind in [MailTemplate::Before, MailTemplate::After] {
        let mail = t
            .render_session_mail(kind, &session_view("Contoso", "PC-1"))
            .expect("renders");
        assert!(!mail.subject.is_empty());
        assert!(mail.text.contains("PC-1"));
        assert!(mail.html.contains("PC-1"));
    }
    let test = t
        .render_test_mail(&TestMailView {
            brand: brand("Contoso"),
            recipient: "anna@contoso.example".to_owned(),
        })
        .expect("renders");
    assert!(test.subject.contains("Contoso"));
    assert!(test.text.contains("anna@contoso.example"));
    assert!(test.html.contains("#aa0000"));
}

#[test]
fn html_escapes_and_text_keeps_names_verbatim() {
    let t = Templates::load(None).expect("load");
    let view = session_view(
        "A&B <script>alert(1)</script>",
        "PC <script>x</script> & co",
    );
    let mail = t
        .render_session_mail(MailTemplate::Before, &view)
        .expect("renders");
    assert!(!mail.html.contains("<script>"), "{}", mail.html);
    assert!(mail.html.contains("A&amp;B &lt;script&gt;"));
    assert!(
        mail.html
            .contains("PC &lt;script&gt;x&lt;/script&gt; &amp; co")
    );
    assert!(mail.text.contains("A&B <script>alert(1)</script>"));
    assert!(mail.text.contains("PC <script>x</script> & co"));
    assert!(!mail.text.contains("&amp;"));
    assert!(mail.subject.contains("PC <script>x</script> & co"));
    assert!(mail.text.contains("Upgrade 1.9.2 → 1.10.0"));
    assert!(mail.html.contains("1.9.2 → 1.10.0"));
    assert!(mail.text.contains("Your computer may restart."));
}

#[test]
fn subject_has_no_line_breaks_even_with_hostile_names() {
    let t = Templates::load(None).expect("load");
    let hostile = "PC\r\nBcc: evil@x";
    let mut view = session_view("Evil\r\nCo\u{0}", hostile);
    view.result_summary = Some("done\nX-Header: y".to_owned());
    for kind in [MailTemplate::Before, MailTemplate::After] {
        let mail = t.render_session_mail(kind, &view).expect("renders");
        assert!(
            !mail.subject.chars().any(|c| c.is_control()),
            "{:?}",
            mail.subject
        );
        assert!(
            mail.subject.contains("PC Bcc: evil@x"),
            "{:?}",
            mail.subject
        );
    }
    let test = t
        .render_test_mail(&TestMailView {
            brand: brand("Evil\r\nBcc: evil@x"),
            recipient: "a@b".to_owned(),
        })
        .expect("renders");
    assert_eq!(test.subject, "Evil Bcc: evil@x: test message");
}

#[test]
fn broken_override_fails_load_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("maintenance-before.html.hbs");
    std::fs::write(&path, "<p>{{#if computerName}}unclosed</p>\n").expect("write");
    let err = Templates::load(Some(dir.path())).expect_err("broken template");
    match &err {
        TemplateError::Invalid { name, message } => {
            assert!(name.contains("maintenance-before.html.hbs"), "{name}");
            assert!(!message.is_empty());
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("maintenance-before.html.hbs"));
}

#[test]
fn override_with_unknown_variable_fails_load_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("partials")).expect("mkdir");
    let path = dir.path().join("partials").join("footer-txt.hbs");
    std::fs::write(&path, "Bye {{brand.nosuchfield}}\n").expect("write");
    let err = Templates::load(Some(dir.path())).expect_err("strict mode");
    match err {
        TemplateError::Invalid { name, .. } => {
            assert!(name.ends_with("footer-txt.hbs"), "{name}")
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn override_file_replaces_builtin_and_others_fall_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("maintenance-before.subject.hbs"),
        "Custom: {{computerName}}",
    )
    .expect("write");
    std::fs::create_dir(dir.path().join("partials")).expect("mkdir");
    std::fs::write(
        dir.path().join("partials").join("footer-txt.hbs"),
        "Custom footer\n",
    )
    .expect("write");
    let t = Templates::load(Some(dir.path())).expect("load");
    let mail = t
        .render_session_mail(MailTemplate::Before, &session_view("Contoso", "PC-7"))
        .expect("renders");
    assert_eq!(mail.subject, "Custom: PC-7");
    assert!(mail.text.ends_with("Custom footer\n"), "{}", mail.text);
    assert!(mail.html.contains("Planned maintenance"));
}

#[test]
fn missing_templates_dir_is_an_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let err = Templates::load(Some(&missing)).expect_err("missing dir");
    assert!(matches!(err, TemplateError::Io { .. }), "{err:?}");
}

#[test]
fn postpone_link_only_when_offered() {
    let t = Templates::load(None).expect("load");
    let mut view = session_view("Contoso", "PC-1");
    let with = t
        .render_session_mail(MailTemplate::Before, &view)
        .expect("renders");
    assert!(with.html.contains("https://upkeep.example/postpone/tok123"));
    assert!(
        with.text
            .contains("https://upkeep.example/postpone/tok123\n")
    );
    assert!(with.html.contains(">Postpone</a>"));
    view.postpone_url = None;
    view.update_now_url = None;
    let without = t
        .render_session_mail(MailTemplate::Before, &view)
        .expect("renders");
    assert!(!without.html.contains("/postpone/"), "{}", without.html);
    assert!(!without.text.contains("/postpone/"));
    assert!(!without.html.contains(">Postpone</a>"));
    assert!(!without.text.contains("postpone"));
}

#[test]
fn every_postpone_page_state_renders() {
    let t = Templates::load(None).expect("load");
    let expect = [
        (PostponeState::Confirm, "Planned maintenance"),
        (PostponeState::Postponed, "Wednesday, 4 March 2026 at 22:00"),
        (PostponeState::Updating, "will start shortly"),
        (PostponeState::Used, "already been used"),
        (PostponeState::Expired, "has expired"),
        (PostponeState::Invalid, "not valid"),
        (PostponeState::Limit, "cannot be postponed again"),
        (PostponeState::TooLate, "too late to postpone"),
        (PostponeState::RebootConfirm, "needs a restart"),
        (PostponeState::Rebooting, "restarts now"),
        (PostponeState::RebootDone, "no restart pending"),
    ];
    for (state, text) in expect {
        let page = t.render_postpone_page(&page_view(state)).expect("renders");
        assert!(page.starts_with("<!DOCTYPE html>"), "{state:?}");
        assert!(page.contains(text), "{state:?} lacks {text:?}");
        assert!(!page.contains("<script"), "{state:?}");
    }
    let confirm = t
        .render_postpone_page(&page_view(PostponeState::Confirm))
        .expect("renders");
    assert!(confirm.contains(r#"<form method="post">"#));
    assert!(confirm.contains(r#"name="action" value="postpone""#));
    assert!(confirm.contains(r#"name="action" value="update-now""#));
    let mut no_update = page_view(PostponeState::Confirm);
    no_update.allow_update_now = false;
    let page = t.render_postpone_page(&no_update).expect("renders");
    assert!(!page.contains(r#"value="update-now""#));
    for state in PostponeState::ALL {
        if matches!(
            state,
            PostponeState::Confirm | PostponeState::Limit | PostponeState::RebootConfirm
        ) {
            continue;
        }
        let page = t.render_postpone_page(&page_view(state)).expect("renders");
        assert!(!page.contains("<form"), "{state:?} offers no form");
    }
    let reboot = t
        .render_postpone_page(&page_view(PostponeState::RebootConfirm))
        .expect("renders");
    assert!(reboot.contains(r#"name="action" value="reboot-now""#));
    assert!(!reboot.contains(r#"value="postpone""#));
    let unknown = PostponePageView {
        state: "bogus".to_owned(),
        ..page_view(PostponeState::Confirm)
    };
    let page = t.render_postpone_page(&unknown).expect("renders");
    assert!(page.contains("Something went wrong"));
}

#[test]
fn after_mail_lists_outcomes_and_result() {
    let t = Templates::load(None).expect("load");
    let mut view = session_view("Contoso", "PC-1");
    view.actions = vec![
        ActionView::planned(
            "7-Zip",
            PlannedChange::Upgrade {
                from: Some("1.9.2"),
                to: Some("1.10.0"),
            },
        )
        .with_outcome(ActionOutcome::Succeeded, None),
        ActionView::planned("Firefox", PlannedChange::Install { version: None })
            .with_outcome(ActionOutcome::Failed, Some("exit code 1\nstderr: boom")),
    ];
    view.result_summary = Some("1 of 2 actions failed".to_owned());
    view.reboot = RebootExpectation::Will;
    let mail = t
        .render_session_mail(MailTemplate::After, &view)
        .expect("renders");
    assert_eq!(
        mail.subject,
        "Maintenance on PC-1 finished: 1 of 2 actions failed"
    );
    assert!(
        mail.text
            .contains("7-Zip: Upgrade 1.9.2 → 1.10.0 ... Succeeded")
    );
    assert!(mail.text.contains("Firefox: Install ... Failed"));
    assert!(mail.text.contains("exit code 1 stderr: boom"));
    assert!(mail.text.contains("Result: 1 of 2 actions failed"));
    assert!(mail.html.contains("Failed"));
    assert!(!mail.text.contains("/postpone/"));
}

#[test]
fn brand_colour_cannot_inject_css() {
    let t = Templates::load(None).expect("load");
    let mut view = session_view("Contoso", "PC-1");
    view.brand.primary_color = "red;}</style><script>x</script>".to_owned();
    view.brand.logo_url = Some("javascript:alert(1)".to_owned());
    let mail = t
        .render_session_mail(MailTemplate::Before, &view)
        .expect("renders");
    assert!(mail.html.contains(DEFAULT_PRIMARY_COLOR));
    assert!(!mail.html.contains("red;"));
    assert!(!mail.html.contains("javascript:"));
    assert_eq!(sanitize_color(" #A1B2C3 "), "#a1b2c3");
    assert_eq!(sanitize_color("#fff"), DEFAULT_PRIMARY_COLOR);
}

#[test]
fn light_primary_gets_dark_text() {
    assert_eq!(derived_colors("#ffff00").0, "#111827");
    assert_eq!(derived_colors("#ffff00").1, Some("#1f2937"));
    assert_eq!(derived_colors("#1a1a7a"), ("#ffffff", None));
}

#[test]
fn format_when_uses_the_time_zone() {
    let t = chrono::Utc
        .with_ymd_and_hms(2026, 3, 3, 21, 0, 0)
        .single()
        .expect("valid time");
    assert_eq!(
        format_when(t, chrono_tz::Europe::Berlin),
        "Tuesday, 3 March 2026 at 22:00 CET"
    );
    assert_eq!(
        format_when(t, chrono_tz::UTC),
        "Tuesday, 3 March 2026 at 21:00 UTC"
    );
}

#[test]
fn text_is_tidied() {
    assert_eq!(tidy_text("\n\na  \n\n\n\nb\n\n"), "a\n\nb\n");
}
