package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// netTopo is the network of the partition scenarios, made of namespaces the
// test creates (and deletes, by the names it generated, at cleanup):
//
//	test's namespace          nsCP (control plane)            nsAgent (one agent)
//	 vRoot 10.A.B.2/30 ─veth─ vCP 10.A.B.1/30
//	                          vPart 10.A.B.5/30 ─veth─────────  vAgent 10.A.B.6/30
//
// The control plane listens on 10.A.B.1, inside its namespace. The test,
// tendctl and the other agents reach it over vRoot; the agent in nsAgent
// over vPart (its route to 10.A.B.0/30 goes via 10.A.B.5). Taking vPart down
// cuts that one agent off, silently: packets are dropped, no connection is
// reset.
type netTopo struct {
	nsCP, nsAgent             string
	vRoot, vCP, vPart, vAgent string
	cpIP, rootIP, partIP      string
	agentIP                   string
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	require.NoError(t, err, "ip %s: %s", strings.Join(args, " "), out)
}

// newNetTopo builds the namespaces and links; they are deleted at cleanup,
// after the processes in them (cleanups run last-registered first, and the
// processes are started later).
func newNetTopo(t *testing.T) *netTopo {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) not installed: scripts/deps.sh installs it")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	// A /29 in 10.200-249.x.y that no interface of ours uses.
	addrs, err := exec.Command("ip", "-o", "-4", "addr").CombinedOutput()
	require.NoError(t, err)
	var base string
	for range 100 {
		base = fmt.Sprintf("10.%d.%d.", 200+mrand.IntN(50), mrand.IntN(256))
		if !strings.Contains(string(addrs), base) {
			break
		}
	}
	n := &netTopo{
		nsCP: "tend-" + id + "-cp", nsAgent: "tend-" + id + "-ag",
		vRoot: "td" + id + "r", vCP: "td" + id + "c", vPart: "td" + id + "p", vAgent: "td" + id + "a",
		cpIP: base + "1", rootIP: base + "2", partIP: base + "5", agentIP: base + "6",
	}
	t.Cleanup(func() {
		for _, ns := range []string{n.nsAgent, n.nsCP} {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Logf("ip netns del %s: %v: %s", ns, err, out)
			}
		}
		// Gone with its peer's namespace; in case that is still held open.
		_ = exec.Command("ip", "link", "del", n.vRoot).Run()
	})
	ipCmd(t, "netns", "add", n.nsCP)
	ipCmd(t, "netns", "add", n.nsAgent)
	ipCmd(t, "-n", n.nsCP, "link", "set", "lo", "up")
	ipCmd(t, "-n", n.nsAgent, "link", "set", "lo", "up")
	ipCmd(t, "link", "add", n.vRoot, "type", "veth", "peer", "name", n.vCP, "netns", n.nsCP)
	ipCmd(t, "addr", "add", n.rootIP+"/30", "dev", n.vRoot)
	ipCmd(t, "link", "set", n.vRoot, "up")
	ipCmd(t, "-n", n.nsCP, "addr", "add", n.cpIP+"/30", "dev", n.vCP)
	ipCmd(t, "-n", n.nsCP, "link", "set", n.vCP, "up")
	ipCmd(t, "-n", n.nsCP, "link", "add", n.vPart, "type", "veth", "peer", "name", n.vAgent, "netns", n.nsAgent)
	ipCmd(t, "-n", n.nsCP, "addr", "add", n.partIP+"/30", "dev", n.vPart)
	ipCmd(t, "-n", n.nsCP, "link", "set", n.vPart, "up")
	ipCmd(t, "-n", n.nsAgent, "addr", "add", n.agentIP+"/30", "dev", n.vAgent)
	ipCmd(t, "-n", n.nsAgent, "link", "set", n.vAgent, "up")
	ipCmd(t, "-n", n.nsAgent, "route", "add", n.cpIP+"/32", "via", n.partIP)
	t.Logf("network: control plane in %s on %s, agent in %s on %s (link %s)", n.nsCP, n.cpIP, n.nsAgent, n.agentIP, n.vPart)
	return n
}

// cut takes the link to the agent's namespace down on the control plane's
// side: its packets are dropped from now on.
func (n *netTopo) cut(t *testing.T) { ipCmd(t, "-n", n.nsCP, "link", "set", n.vPart, "down") }

// heal brings the link back up (its address's route comes back with it).
func (n *netTopo) heal(t *testing.T) { ipCmd(t, "-n", n.nsCP, "link", "set", n.vPart, "up") }
