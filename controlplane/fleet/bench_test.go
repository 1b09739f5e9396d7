package fleet

import (
	"fmt"
	"testing"
	"time"

	"tend.dev/tend/controlplane/store"
)

// registryOf returns a registry of n connected-looking agents with a few
// labels and facts each, as tend-agent sends them, without a store.
func registryOf(n int) *Registry {
	r := &Registry{agents: map[string]*entry{}, toFlush: map[string]struct{}{}}
	for i := range n {
		id := fmt.Sprintf("agt-%06d", i)
		r.agents[id] = &entry{agent: store.Agent{
			ID: id, Name: fmt.Sprintf("web-%06d", i), Status: store.StatusConnected, LastSeen: time.Now(),
			Labels: map[string]string{"role": "web", "zone": "a", "app": "shop"},
			Facts:  map[string]string{"os": "linux", "arch": "amd64", "hostname": id, "kernel": "6.1.0"},
		}}
	}
	return r
}

// BenchmarkList: the remediation loop lists the fleet to count the agents
// a policy matches (max_concurrent as a percent, correlation), once per
// remediation attempt.
func BenchmarkList(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		r := registryOf(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if len(r.List()) != n {
					b.Fatal("short list")
				}
			}
		})
	}
}

func BenchmarkGet(b *testing.B) {
	r := registryOf(100)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := r.Get("agt-000042"); !ok {
			b.Fatal("missing")
		}
	}
}
