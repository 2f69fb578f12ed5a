"""SMTP email channel: the alert as plain text and HTML, over implicit TLS or STARTTLS."""

from __future__ import annotations

import html
import smtplib
import ssl
from email.message import EmailMessage

from hft_pipeline.observability.alerts.channel import DeliveryError
from hft_pipeline.observability.alerts.model import LEVEL_COLOURS, Alert
from hft_pipeline.observability.redaction import register as _register_secrets


def email_bodies(alert: Alert) -> tuple[str, str]:
    """(plain text, HTML) bodies of the alert email; every value HTML-escaped in the HTML."""
    facts = "\n".join(f"{k}: {v}" for k, v in alert.fields.items())
    plain = f"{alert.level.name}: {alert.title}\n\n{alert.message}\n"
    plain += f"\n{facts}\n" if facts else ""
    plain += f"\n{alert.url}\n" if alert.url else ""
    plain += f"\n-- {alert.source}, {alert.created_at.isoformat()}\n"
    e = html.escape
    colour = f"#{LEVEL_COLOURS[alert.level]:06x}"
    rows = "".join(
        f"<tr><th align='left'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in alert.fields.items()
    )
    link = f'<p><a href="{e(alert.url)}">{e(alert.url)}</a></p>' if alert.url else ""
    html_body = (
        f"<html><body>"
        f"<h2 style='color:{colour}'>{e(alert.level.name)}: {e(alert.title)}</h2>"
        f"<pre style='white-space:pre-wrap'>{e(alert.message)}</pre>"
        f"<table>{rows}</table>{link}"
        f"<p style='color:#888'>{e(alert.source)}, {e(alert.created_at.isoformat())}</p>"
        f"</body></html>"
    )
    return plain, html_body


class EmailChannel:
    """SMTP email (plain text + HTML): implicit TLS on port 465, else STARTTLS when offered."""

    name = "email"

    def __init__(
        self,
        server: str,
        port: int,
        sender: str,
        recipients: list[str],
        *,
        username: str | None = None,
        password: str | None = None,
        implicit_tls: bool | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.server, self.port = server, port
        self.sender, self.recipients = sender, recipients
        self.username, self.password = username, password
        self.implicit_tls = port == 465 if implicit_tls is None else implicit_tls
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.timeout_s = timeout_s
        _register_secrets([password])

    def message(self, alert: Alert) -> EmailMessage:
        plain, html_body = email_bodies(alert)
        msg = EmailMessage()
        # Header values must not carry line breaks (header injection).
        msg["Subject"] = " ".join(f"[{alert.level.name}] {alert.title}".split())[:200]
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg.set_content(plain)
        msg.add_alternative(html_body, subtype="html")
        return msg

    def deliver(self, alert: Alert) -> None:
        msg = self.message(alert)
        try:
            if self.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.server, self.port, timeout=self.timeout_s, context=self.ssl_context
                )
            else:
                smtp = smtplib.SMTP(self.server, self.port, timeout=self.timeout_s)
            with smtp:
                smtp.ehlo()
                if not self.implicit_tls and smtp.has_extn("starttls"):
                    smtp.starttls(context=self.ssl_context)
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(msg, self.sender, self.recipients)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"email: login refused ({exc.smtp_code})", retryable=False
            ) from None
        except smtplib.SMTPResponseException as exc:
            text = (
                exc.smtp_error.decode(errors="replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            raise DeliveryError(
                f"email: SMTP {exc.smtp_code}: {text}", retryable=400 <= exc.smtp_code < 500
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(
                f"email: recipients refused: {list(exc.recipients)}", retryable=False
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"email: {type(exc).__name__}: {exc}", retryable=True) from None

    def close(self) -> None:
        pass
