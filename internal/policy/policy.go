// Package policy parses and validates Tend policies, the YAML documents
// admins apply with `tendctl apply -f`, and converts them to what the rest of
// the system needs: canonical JSON for the store and CheckSpecs for agents.
//
// The control plane and tendctl share this package, so a file tendctl
// accepts locally is a file the control plane accepts, with the same errors
// (file:line: field: message).
package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// APIVersion and Kind are the only accepted values of the fields of the same
// name.
const (
	APIVersion = "tend.dev/v1"
	Kind       = "Policy"
)

// Modes.
const (
	ModeEnforce = "enforce" // act on triggers
	ModeShadow  = "shadow"  // record what would be done, send nothing
)

// Check types.
const (
	CheckProcess = "process"
	CheckDisk    = "disk"
	CheckTCP     = "tcp"
	CheckHTTP    = "http"
	CheckCommand = "command"
	CheckService = "service"
)

// CheckTypes lists the check types in the order error messages show them.
var CheckTypes = []string{CheckProcess, CheckDisk, CheckTCP, CheckHTTP, CheckCommand, CheckService}

// KnownActions lists the actions of the plugins Tend ships, by plugin. An
// action of one of these plugins must be in its list; an action of another
// plugin (a third-party one) only needs the `<plugin>.<action>` form.
var KnownActions = map[string][]string{
	"process": {"restart", "kill"},
	"service": {"restart"},
	"disk":    {"cleanup"},
	"exec":    {"run"},
}

// Defaults applied after validation, so that a stored spec is explicit.
const (
	DefaultInterval      = 10 * time.Second
	DefaultMaxTimeout    = 10 * time.Second // timeout default: min(interval, this)
	DefaultFailures      = 3
	DefaultWindow        = 5
	DefaultExpectStatus  = 200
	DefaultActionTimeout = 30 * time.Second
	DefaultVerifyWithin  = 30 * time.Second
	DefaultMaxAttempts   = 3
	DefaultBackoff       = 30 * time.Second
	DefaultCooldown      = 10 * time.Minute
	// Approval: an unapproved task escalates after this.
	DefaultApprovalTimeout = time.Hour
	// Circuit breaker: this many failed attempts (task failed, or not
	// verified) of a policy within the window open it.
	DefaultBreakerFailures = 5
	DefaultBreakerWindow   = time.Hour
	// Correlated failures: more than this percent of the matched agents
	// failing within the window, and at least MinAgents of them, is one
	// fleet-wide problem, not many host problems.
	DefaultCorrelationPercent   = 50
	DefaultCorrelationWindow    = 5 * time.Minute
	DefaultCorrelationMinAgents = 3
	// Autonomy: act alone after 30 s without the control plane, at most 3
	// times an hour, under orders valid for 24 h.
	DefaultOfflineAfter      = 30 * time.Second
	DefaultOfflineMaxPerHour = 3
	DefaultOfflineValidFor   = 24 * time.Hour
	MinInterval              = time.Second
	MaxWindow                = 100
	maxNameLen               = 63
	maxParamsNodes           = 10000
	maxExactFloatInteger     = 1 << 53
)

// Policy is one parsed, validated policy document with defaults applied.
type Policy struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Spec       Spec     `yaml:"spec" json:"spec"`

	// Version is the stored version (FromSpecJSON); 0 for a freshly parsed
	// policy. It is not part of the document.
	Version uint64 `yaml:"-" json:"-"`
}

// Metadata names a policy.
type Metadata struct {
	Name string `yaml:"name" json:"name"`
}

// Spec is what a policy says. Its canonical JSON (SpecJSON) is what the
// store keeps and compares.
type Spec struct {
	Selector   Selector `yaml:"selector" json:"selector"`
	Mode       string   `yaml:"mode" json:"mode"`
	Autonomous bool     `yaml:"autonomous" json:"autonomous"`
	// Offline is the autonomous policy's offline budget (set, with
	// defaults, exactly when Autonomous).
	Offline *Offline `yaml:"offline,omitempty" json:"offline,omitempty"`
	Check   Check    `yaml:"check" json:"check"`
	Trigger Trigger  `yaml:"trigger" json:"trigger"`
	// Remediation is nil when the policy only watches.
	Remediation *Remediation `yaml:"remediation,omitempty" json:"remediation,omitempty"`
	// Limits is nil when the policy sets no fleet-wide limits.
	Limits *Limits `yaml:"limits,omitempty" json:"limits,omitempty"`
	// Escalate is nil when nothing is paged.
	Escalate *Escalate `yaml:"escalate,omitempty" json:"escalate,omitempty"`
}

// Offline bounds what an agent does alone under a standing order: it acts
// only after the control plane has been unreachable for After, at most
// MaxPerHour times in any hour, and the order it holds expires ValidFor
// after it was signed (the control plane re-signs long before).
type Offline struct {
	After      Duration `yaml:"after" json:"after"`
	MaxPerHour int      `yaml:"maxPerHour" json:"maxPerHour"`
	ValidFor   Duration `yaml:"validFor" json:"validFor"`
}

// Selector picks agents by label. An empty selector is an error, never "all".
type Selector struct {
	MatchLabels map[string]string `yaml:"matchLabels" json:"matchLabels"`
}

// Check is the health check agents run for the policy: Type and the one
// sub-object named after it.
type Check struct {
	Type     string   `yaml:"type" json:"type"`
	Interval Duration `yaml:"interval" json:"interval"`
	Timeout  Duration `yaml:"timeout" json:"timeout"`

	Process *ProcessCheck `yaml:"process,omitempty" json:"process,omitempty"`
	Disk    *DiskCheck    `yaml:"disk,omitempty" json:"disk,omitempty"`
	TCP     *TCPCheck     `yaml:"tcp,omitempty" json:"tcp,omitempty"`
	HTTP    *HTTPCheck    `yaml:"http,omitempty" json:"http,omitempty"`
	Command *CommandCheck `yaml:"command,omitempty" json:"command,omitempty"`
	Service *ServiceCheck `yaml:"service,omitempty" json:"service,omitempty"`
}

// ProcessCheck passes while a process runs, found by exactly one of name or
// pidfile.
type ProcessCheck struct {
	Name    string `yaml:"name,omitempty" json:"name,omitempty"`
	Pidfile string `yaml:"pidfile,omitempty" json:"pidfile,omitempty"`
}

// DiskCheck fails when the filesystem holding Path is fuller than
// MaxUsedPercent.
type DiskCheck struct {
	Path           string  `yaml:"path" json:"path"`
	MaxUsedPercent float64 `yaml:"maxUsedPercent" json:"maxUsedPercent"`
}

// TCPCheck passes when a connection to Address (host:port) opens.
type TCPCheck struct {
	Address string `yaml:"address" json:"address"`
}

// HTTPCheck passes when a GET of URL answers ExpectStatus.
type HTTPCheck struct {
	URL          string `yaml:"url" json:"url"`
	ExpectStatus int    `yaml:"expectStatus" json:"expectStatus"`
}

// CommandCheck runs Argv (never through a shell); Nagios exit codes.
type CommandCheck struct {
	Argv []string `yaml:"argv" json:"argv"`
}

// ServiceCheck passes while the systemd unit Name is active.
type ServiceCheck struct {
	Name string `yaml:"name" json:"name"`
}

// Trigger says when results count as a failure: Failures failed results
// among the last Window, and When (a CEL expression, evaluated by the engine)
// if set.
type Trigger struct {
	Failures int    `yaml:"failures" json:"failures"`
	Window   int    `yaml:"window" json:"window"`
	When     string `yaml:"when,omitempty" json:"when,omitempty"`
}

// Remediation is what the control plane asks the agent to do.
type Remediation struct {
	// Action is "<plugin>.<action>", e.g. "process.restart".
	Action string `yaml:"action" json:"action"`
	// Params are the action's parameters as JSON values: nil, bool,
	// float64, string, []any and map[string]any.
	Params          map[string]any `yaml:"params,omitempty" json:"params,omitempty"`
	Timeout         Duration       `yaml:"timeout" json:"timeout"`
	RequireApproval bool           `yaml:"requireApproval" json:"requireApproval"`
	Verify          Verify         `yaml:"verify" json:"verify"`
	MaxAttempts     int            `yaml:"maxAttempts" json:"maxAttempts"`
	// Backoff is the wait before the second attempt; it doubles per attempt.
	Backoff Duration `yaml:"backoff" json:"backoff"`
	// Cooldown is the quiet time after a remediation before the next one.
	Cooldown Duration `yaml:"cooldown" json:"cooldown"`
	// ApprovalTimeout is how long a task that needs approval waits for it
	// before the incident escalates (set when RequireApproval).
	ApprovalTimeout Duration `yaml:"approvalTimeout,omitempty" json:"approvalTimeout,omitempty"`
}

// Plugin returns the plugin part of Action ("process" for "process.restart").
func (r *Remediation) Plugin() string {
	p, _, _ := strings.Cut(r.Action, ".")
	return p
}

// Verify says how long the check has to pass again after an action.
type Verify struct {
	Within Duration `yaml:"within" json:"within"`
}

// Limits bound how much automation runs at once across the fleet.
type Limits struct {
	// MaxConcurrent is empty (no limit), a number ("3") or a percent of the
	// matched agents ("10%").
	MaxConcurrent MaxConcurrent `yaml:"maxConcurrent,omitempty" json:"maxConcurrent,omitempty"`
	// MaxPerHour is 0 for no limit.
	MaxPerHour int `yaml:"maxPerHour,omitempty" json:"maxPerHour,omitempty"`
	// Breaker is the policy's circuit breaker (defaults when left out).
	Breaker *Breaker `yaml:"breaker,omitempty" json:"breaker,omitempty"`
	// Correlation is the correlated-failure suppression (defaults when
	// left out).
	Correlation *Correlation `yaml:"correlation,omitempty" json:"correlation,omitempty"`
}

// Breaker stops a policy that keeps failing: Failures failed attempts
// (the task failed, or the check did not pass again) within Window open
// it; it then escalates instead of acting until `tendctl rearm policy`.
// Failures 0 turns it off.
type Breaker struct {
	Failures int      `yaml:"failures" json:"failures"`
	Window   Duration `yaml:"window" json:"window"`
}

// Correlation holds host-by-host remediation when many agents fail at
// once: when more than Percent of the agents the policy matches (and at
// least MinAgents) have failed it within Window, one fleet-wide incident
// is opened and escalated, and no task is sent until fewer fail. Percent 0
// turns it off.
type Correlation struct {
	Percent   int      `yaml:"percent" json:"percent"`
	Window    Duration `yaml:"window" json:"window"`
	MinAgents int      `yaml:"minAgents" json:"minAgents"`
}

// Escalate says whom to tell when automation could not fix it.
type Escalate struct {
	Webhook string `yaml:"webhook,omitempty" json:"webhook,omitempty"`
}

// Name returns metadata.name.
func (p *Policy) Name() string { return p.Metadata.Name }

// Matches reports whether an agent with these labels is selected: every
// matchLabels entry must be present with the same value. An empty selector
// matches nothing.
func (p *Policy) Matches(labels map[string]string) bool {
	if len(p.Spec.Selector.MatchLabels) == 0 {
		return false
	}
	for k, want := range p.Spec.Selector.MatchLabels {
		got, ok := labels[k]
		if !ok || got != want {
			return false
		}
	}
	return true
}

// SpecJSON returns the canonical JSON of the spec: the same spec always
// gives the same bytes (struct fields in declaration order, map keys sorted,
// durations as strings, no HTML escaping, no trailing newline).
func (p *Policy) SpecJSON() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&p.Spec); err != nil {
		return nil, fmt.Errorf("policy %s: encode spec: %w", p.Metadata.Name, err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// FromSpecJSON rebuilds a policy from what the store keeps (the output of
// SpecJSON). Unknown fields are an error: a spec this version does not fully
// understand is not silently run with parts missing.
func FromSpecJSON(name string, version uint64, spec []byte) (*Policy, error) {
	p := &Policy{APIVersion: APIVersion, Kind: Kind, Metadata: Metadata{Name: name}, Version: version}
	dec := json.NewDecoder(bytes.NewReader(spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p.Spec); err != nil {
		return nil, fmt.Errorf("policy %s version %d: decode stored spec: %w", name, version, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("policy %s version %d: decode stored spec: trailing data after the JSON object", name, version)
	}
	return p, nil
}

// YAML returns the policy as a YAML document (fields in the order of the
// example policy), e.g. for `tendctl describe policy`.
func (p *Policy) YAML() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(p); err != nil {
		return nil, fmt.Errorf("policy %s: encode yaml: %w", p.Metadata.Name, err)
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// CheckSpec converts the policy's check to what agents run. Its id is the
// policy name.
func (p *Policy) CheckSpec(version uint64) *agentv1.CheckSpec {
	c := p.Spec.Check
	cs := &agentv1.CheckSpec{
		Id:            p.Metadata.Name,
		PolicyVersion: version,
		Interval:      durationpb.New(c.Interval.D()),
		Timeout:       durationpb.New(c.Timeout.D()),
	}
	switch {
	case c.Process != nil:
		cs.Check = &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Name: c.Process.Name, Pidfile: c.Process.Pidfile}}
	case c.Disk != nil:
		cs.Check = &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: c.Disk.Path, MaxUsedPercent: c.Disk.MaxUsedPercent}}
	case c.TCP != nil:
		cs.Check = &agentv1.CheckSpec_Tcp{Tcp: &agentv1.TcpCheck{Address: c.TCP.Address}}
	case c.HTTP != nil:
		cs.Check = &agentv1.CheckSpec_Http{Http: &agentv1.HttpCheck{Url: c.HTTP.URL, ExpectStatus: int32(c.HTTP.ExpectStatus)}}
	case c.Command != nil:
		cs.Check = &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: append([]string(nil), c.Command.Argv...)}}
	case c.Service != nil:
		cs.Check = &agentv1.CheckSpec_Service{Service: &agentv1.ServiceCheck{Name: c.Service.Name}}
	}
	return cs
}

// Duration is a time.Duration written as a Go duration string ("5s",
// "10m") in YAML and JSON.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats like time.Duration.String without zero trailing units:
// "10m" rather than "10m0s", "1h" rather than "1h0m0s".
func (d Duration) String() string {
	s := time.Duration(d).String()
	for _, unit := range []string{"0s", "0m"} {
		if len(s) > len(unit) && strings.HasSuffix(s, unit) {
			if c := s[len(s)-len(unit)-1]; c == 'm' || c == 'h' {
				s = s[:len(s)-len(unit)]
			}
		}
	}
	return s
}

// ParseDuration parses a Go duration string.
func ParseDuration(s string) (Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want a Go duration such as \"5s\", \"1m30s\" or \"10m\"", s)
	}
	return Duration(d), nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"5s\": %w", err)
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// MarshalYAML writes the duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML reads a duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// MaxConcurrent is limits.maxConcurrent: "" (no limit), a positive number
// ("3") or a percent of the matched agents from 1 to 100 ("10%"). YAML
// integers are accepted and kept as their decimal string.
type MaxConcurrent string

// parse returns the number or percent; ok is false when the value is
// malformed or out of range.
func (m MaxConcurrent) parse() (n int, percent bool, ok bool) {
	s := string(m)
	if rest, isPct := strings.CutSuffix(s, "%"); isPct {
		v, err := strconv.Atoi(rest)
		if err != nil || v < 1 || v > 100 || rest != strconv.Itoa(v) {
			return 0, true, false
		}
		return v, true, true
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 || s != strconv.Itoa(v) {
		return 0, false, false
	}
	return v, false, true
}

// Limit returns how many remediations may run at once when the selector
// matches `matched` agents: the number itself, or the percent of matched
// rounded up (at least 1). It returns math.MaxInt when there is no limit.
func (m MaxConcurrent) Limit(matched int) int {
	if m == "" {
		return math.MaxInt
	}
	n, pct, ok := m.parse()
	if !ok {
		return 1 // unreachable for a validated policy; be conservative
	}
	if !pct {
		return n
	}
	l := (matched*n + 99) / 100
	if l < 1 {
		l = 1
	}
	return l
}
