package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// README: the heartbeat TTL is max(10s, agents/2000 per second); an agent is
// marked down after TTL + 5s grace of silence. With a small fleet that is 15s.
const downWithin = 15 * time.Second

func TestKilledAgentGoesDownAndComesBackWithoutToken(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	dir := t.TempDir()
	a := startAgent(t, cp, "victim", dir, cp.token(t), "--labels", "role=web")
	cp.waitAgentStatus(t, "victim", "connected", 20*time.Second)

	a.kill()
	killedAt := time.Now()
	cp.waitAgentStatus(t, "victim", "down", downWithin+5*time.Second)
	took := time.Since(killedAt)
	t.Logf("SIGKILLed agent reported down after %s (TTL+grace %s)", took.Round(100*time.Millisecond), downWithin)
	require.LessOrEqual(t, took, downWithin+2*time.Second, "down later than TTL + grace (+2s polling slack)")

	// Restarted from the same data dir: no token needed.
	startAgent(t, cp, "victim", dir, "", "--labels", "role=web")
	cp.waitAgentStatus(t, "victim", "connected", 20*time.Second)
	require.Len(t, cp.agents(t), 1, "restart must not enroll a second agent")
}
