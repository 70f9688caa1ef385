"""Prometheus text exposition of the API's counters and the queue's gauges."""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.recipients: Counter[str] = Counter()

    def count_request(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1

    def count_recipients(self, counts: dict[str, int]) -> None:
        self.recipients.update(counts)

    def render(self, gauges: dict[str, int]) -> str:
        lines = [
            "# HELP sluice_http_requests_total HTTP requests answered, by route and status.",
            "# TYPE sluice_http_requests_total counter",
        ]
        for (route, status), n in sorted(self.requests.items()):
            lines.append(
                f'sluice_http_requests_total{{route="{_escape(route)}",status="{status}"}} {n}'
            )
        lines += [
            "# HELP sluice_api_recipients_total Recipients answered by this API process, by status.",
            "# TYPE sluice_api_recipients_total counter",
        ]
        for outcome, n in sorted(self.recipients.items()):
            lines.append(f'sluice_api_recipients_total{{status="{outcome}"}} {n}')
        lines += [
            "# HELP sluice_queue_jobs Jobs in the delivery stream (ready or in flight).",
            "# TYPE sluice_queue_jobs gauge",
            f"sluice_queue_jobs {gauges.get('jobs_in_stream', 0)}",
            "# HELP sluice_queue_delayed Jobs waiting for send_at or a retry.",
            "# TYPE sluice_queue_delayed gauge",
            f"sluice_queue_delayed {gauges.get('jobs_delayed', 0)}",
            "# HELP sluice_messages_total Message outcomes recorded by all processes, by status.",
            "# TYPE sluice_messages_total counter",
        ]
        for key, n in sorted(gauges.items()):
            if key.startswith("total_"):
                lines.append(f'sluice_messages_total{{status="{key[6:]}"}} {n}')
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
