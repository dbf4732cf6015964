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
