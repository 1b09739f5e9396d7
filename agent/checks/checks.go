// Package checks holds the agent's health checks, one file per type. Each
// type registers itself; New builds a Checker from a CheckSpec.
package checks

import (
	"context"
	"fmt"
	"sort"
	"sync"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// MaxOutput is the most output a result carries; longer output is cut.
const MaxOutput = 4096

// Result is the outcome of one run of a check.
type Result struct {
	Status  agentv1.CheckStatus
	Output  string
	Metrics map[string]float64
}

// Checker runs one check. Check must honour ctx's deadline and must not be
// called twice at once (the scheduler guarantees that).
type Checker interface {
	Check(ctx context.Context) Result
}

// Factory builds a Checker from a spec, or says what is wrong with it.
type Factory func(spec *agentv1.CheckSpec) (Checker, error)

var (
	mu        sync.RWMutex
	factories = map[string]Factory{}
)

// Register adds a check type. It is called from init in each check's file.
func Register(kind string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := factories[kind]; dup {
		panic("checks: duplicate registration of " + kind)
	}
	factories[kind] = f
}

// Kinds lists the registered check types, sorted.
func Kinds() []string {
	mu.RLock()
	defer mu.RUnlock()
	out := make([]string, 0, len(factories))
	for k := range factories {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Kind returns the check type of a spec ("" if none is set).
func Kind(spec *agentv1.CheckSpec) string {
	switch spec.GetCheck().(type) {
	case *agentv1.CheckSpec_Process:
		return "process"
	case *agentv1.CheckSpec_Disk:
		return "disk"
	case *agentv1.CheckSpec_Tcp:
		return "tcp"
	case *agentv1.CheckSpec_Http:
		return "http"
	case *agentv1.CheckSpec_Command:
		return "command"
	case *agentv1.CheckSpec_Service:
		return "service"
	}
	return ""
}

// New builds the Checker for spec.
func New(spec *agentv1.CheckSpec) (Checker, error) {
	kind := Kind(spec)
	mu.RLock()
	f, ok := factories[kind]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("check %q: unknown check type %q (known: %v)", spec.GetId(), kind, Kinds())
	}
	c, err := f(spec)
	if err != nil {
		return nil, fmt.Errorf("check %q: %w", spec.GetId(), err)
	}
	return c, nil
}

// Truncate caps s at MaxOutput bytes, cutting on a UTF-8 boundary and
// marking the cut.
func Truncate(s string) string {
	if len(s) <= MaxOutput {
		return s
	}
	const mark = "…[truncated]"
	cut := MaxOutput - len(mark)
	for cut > 0 && (s[cut]&0xC0) == 0x80 {
		cut--
	}
	return s[:cut] + mark
}
