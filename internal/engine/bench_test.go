package engine

import (
	"testing"
	"time"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// BenchmarkObserve measures one result through Observe. OK results never
// evaluate `when`; the critical ones here always do.
func BenchmarkObserve(b *testing.B) {
	labels := map[string]string{"role": "web", "env": "prod"}
	for _, bc := range []struct {
		name   string
		when   string
		status agentv1.CheckStatus
	}{
		{"no_when/ok", "", agentv1.CheckStatus_CHECK_STATUS_OK},
		{"no_when/critical", "", agentv1.CheckStatus_CHECK_STATUS_CRITICAL},
		{"when/ok", `result.metrics.used_percent > 95.0 && labels.env == "prod"`, agentv1.CheckStatus_CHECK_STATUS_OK},
		{"when/critical", `result.metrics.used_percent > 95.0 && labels.env == "prod"`, agentv1.CheckStatus_CHECK_STATUS_CRITICAL},
		{"when_output/critical", `result.output.contains("timeout") || result.status == "critical"`, agentv1.CheckStatus_CHECK_STATUS_CRITICAL},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := mustCompile(b, 3, 5, bc.when)
			res := &agentv1.CheckResult{
				Status:  bc.status,
				Output:  "GET http://127.0.0.1:8080/healthz: 503 Service Unavailable",
				Metrics: map[string]float64{"used_percent": 97, "free_bytes": 1 << 20},
			}
			var s State
			now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			b.ReportAllocs()
			for b.Loop() {
				res.Seq++
				d := r.Observe(&s, res, labels, now)
				if d.Ignored || d.EvalError != "" {
					b.Fatal(d.Reason)
				}
				if d.Trigger {
					s.ResetAfterVerifiedRecovery()
				}
			}
		})
	}
}
