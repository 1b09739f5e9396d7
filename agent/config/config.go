// Package config reads agent.yaml: the agent's own settings, the checks it
// runs whatever the control plane says, and the host's action allow-list.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"tend.dev/tend/agent/watchdog"
)

// Config is agent.yaml. Flags override the file's values.
type Config struct {
	Server    string            `yaml:"server"`
	DataDir   string            `yaml:"dataDir"`
	Name      string            `yaml:"name"`
	Labels    map[string]string `yaml:"labels"`
	PluginDir string            `yaml:"pluginDir"`
	// Actions is the host's allow-list: an absent action is denied. It is
	// enforced by the task verifier (remediation issue).
	Actions map[string]ActionRule `yaml:"actions"`
	// Checks run on this host whatever the control plane assigns.
	Checks []LocalCheck `yaml:"checks"`
	// OutboxMax bounds the results kept while the control plane is away.
	OutboxMax int `yaml:"outboxMax"`
	// MaxBackoff caps the reconnect backoff (default 120s).
	MaxBackoff Duration `yaml:"maxBackoff"`
	// Watchdog limits the agent's own memory and CPU (agent/watchdog).
	Watchdog Watchdog `yaml:"watchdog"`
}

// Watchdog is agent.yaml's watchdog section; empty fields take the
// defaults (watchdog.DefaultLimits).
type Watchdog struct {
	// Memory is the resident memory limit, e.g. "200MiB", or "off".
	Memory string `yaml:"memory"`
	// CPU is the CPU limit in percent of one core, e.g. "10%", or "off".
	CPU string `yaml:"cpu"`
	// CPUWindow is the window CPU use is averaged over (default 1m).
	CPUWindow Duration `yaml:"cpuWindow"`
}

// Limits resolves the section into watchdog limits.
func (w Watchdog) Limits() (watchdog.Limits, error) {
	lim := watchdog.DefaultLimits()
	var errs []error
	if w.Memory != "" {
		v, err := watchdog.ParseBytes(w.Memory)
		if err != nil {
			errs = append(errs, fmt.Errorf("watchdog.memory: %w", err))
		}
		lim.Memory = v
	}
	if w.CPU != "" {
		v, err := watchdog.ParseCPU(w.CPU)
		if err != nil {
			errs = append(errs, fmt.Errorf("watchdog.cpu: %w", err))
		}
		lim.CPU = v
	}
	switch d := time.Duration(w.CPUWindow); {
	case d < 0 || (d > 0 && d < 10*time.Second) || d > time.Hour:
		errs = append(errs, fmt.Errorf("watchdog.cpuWindow: must be from 10s to 1h, got %s", d))
	case d > 0:
		lim.CPUWindow = d
	}
	return lim, errors.Join(errs...)
}

// ActionRule restricts one action's parameters (enforced by
// agent/tasks.AllowList; which fields apply depends on the action).
type ActionRule struct {
	// Commands: the exact argv lists process.restart (command) and
	// exec.run (argv) may run.
	Commands [][]string `yaml:"commands,omitempty"`
	// Paths: the directories disk.cleanup may work in (and below).
	Paths []string `yaml:"paths,omitempty"`
	// Units: the systemd units service.restart may restart (required).
	Units []string `yaml:"units,omitempty"`
	// Signals: the signals process.kill may send (any, when empty).
	Signals []string `yaml:"signals,omitempty"`
	// Pidfiles and Names: the processes process.restart and process.kill
	// may stop, by the pidfile or the process name of their match (at
	// least one of the two lists is required: an absent list matches
	// nothing).
	Pidfiles []string `yaml:"pidfiles,omitempty"`
	Names    []string `yaml:"names,omitempty"`
}

// LocalCheck is a check from agent.yaml; its id is "local/<name>".
type LocalCheck struct {
	Name     string         `yaml:"name"`
	Type     string         `yaml:"type"`
	Interval Duration       `yaml:"interval"`
	Timeout  Duration       `yaml:"timeout"`
	Process  *ProcessParams `yaml:"process"`
	Disk     *DiskParams    `yaml:"disk"`
	TCP      *TCPParams     `yaml:"tcp"`
	HTTP     *HTTPParams    `yaml:"http"`
	Command  *CommandParams `yaml:"command"`
	Service  *ServiceParams `yaml:"service"`
}

// Check parameters, as in a policy's check section.
type (
	ProcessParams struct {
		Name    string `yaml:"name"`
		Pidfile string `yaml:"pidfile"`
	}
	DiskParams struct {
		Path           string  `yaml:"path"`
		MaxUsedPercent float64 `yaml:"maxUsedPercent"`
	}
	TCPParams struct {
		Address string `yaml:"address"`
	}
	HTTPParams struct {
		URL          string `yaml:"url"`
		ExpectStatus int32  `yaml:"expectStatus"`
		expectSet    bool
	}
	CommandParams struct {
		Argv []string `yaml:"argv"`
	}
	ServiceParams struct {
		Name string `yaml:"name"`
	}
)

// Duration is a time.Duration written as "5s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration like \"5s\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: bad duration %q: want a number with a unit, like 5s or 1m", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

var checkNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Load reads and validates agent.yaml.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	return Parse(path, b)
}

// Parse parses agent.yaml content; errors name the file and the field.
func Parse(path string, b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: agent.yaml holds one document; found a second one after '---'", path)
	}
	var errs []error
	seen := map[string]bool{}
	for i, lc := range c.Checks {
		field := fmt.Sprintf("checks[%d]", i)
		if !checkNameRe.MatchString(lc.Name) {
			errs = append(errs, fmt.Errorf("%s: %s.name: %q must be lowercase letters, digits and '-'", path, field, lc.Name))
		}
		if seen[lc.Name] {
			errs = append(errs, fmt.Errorf("%s: %s.name: duplicate check name %q", path, field, lc.Name))
		}
		seen[lc.Name] = true
		if _, err := lc.Spec(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", path, field, err))
		}
	}
	for name := range c.Actions {
		if !strings.Contains(name, ".") {
			errs = append(errs, fmt.Errorf("%s: actions.%s: action names look like <plugin>.<action>, e.g. process.restart", path, name))
		}
	}
	if c.OutboxMax < 0 {
		errs = append(errs, fmt.Errorf("%s: outboxMax: must not be negative (0 means the default, 100000)", path))
	}
	if _, err := c.Watchdog.Limits(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", path, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &c, nil
}

// UnmarshalYAML notes whether expectStatus was written, so that an explicit
// 0 is refused instead of becoming the default.
func (h *HTTPParams) UnmarshalYAML(n *yaml.Node) error {
	type plain HTTPParams
	var p plain
	if err := n.Decode(&p); err != nil {
		return err
	}
	*h = HTTPParams(p)
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch k := n.Content[i]; k.Value {
		case "expectStatus":
			h.expectSet = true
		case "url":
		default:
			// A custom unmarshaler loses the decoder's KnownFields check.
			return fmt.Errorf("line %d: field %s not found in http (want url, expectStatus)", k.Line, k.Value)
		}
	}
	return nil
}
