"""server/router/audit.py: prompts are left out unless asked for, secrets are redacted."""

from server.router.audit import AuditLog, redact


def test_audit_redacts_and_omits_prompts(tmp_path):
    path = tmp_path / "a.jsonl"
    log = AuditLog(str(path), log_prompts=False)
    log.write({"request_id": "r1"}, prompt=[{"role": "user", "content": "secret prompt"}])
    log.close()
    assert "secret prompt" not in path.read_text()
    assert redact({"Authorization": "Bearer x", "a": [{"api_key": "k"}]}) == {
        "Authorization": "[redacted]", "a": [{"api_key": "[redacted]"}]}


def test_a_failed_write_is_counted_once_warned_and_never_raised(caplog):
    errors = []
    log = AuditLog("/dev/full", on_error=lambda: errors.append(1))
    for i in range(3):
        log.write({"request_id": f"r{i}"})  # never raises
    log.flush()
    log.close()
    assert len(errors) == 3 and log.errors == 3
    assert sum("audit log: cannot write" in r.getMessage() for r in caplog.records) == 1


def test_reopen_sends_the_next_line_to_a_new_file(tmp_path):
    path = tmp_path / "a.jsonl"
    log = AuditLog(str(path))
    log.write({"request_id": "before"})
    log.flush()
    path.rename(tmp_path / "a.jsonl.1")
    log.reopen()
    log.write({"request_id": "after"})
    log.close()
    assert "before" in (tmp_path / "a.jsonl.1").read_text() and "after" not in (tmp_path / "a.jsonl.1").read_text()
    assert "after" in path.read_text()


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    log = AuditLog(str(tmp_path / "q.jsonl"), max_queue=1)
    for i in range(1000):  # far faster than one writer thread can append them
        log.write({"i": i})
    dropped = log.errors
    log.close()
    assert dropped > 0
