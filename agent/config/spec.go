package config

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// LocalPrefix starts the id of every check from agent.yaml.
const LocalPrefix = "local/"

// Spec converts a local check to the scheduler's CheckSpec, validating it.
func (lc LocalCheck) Spec() (*agentv1.CheckSpec, error) {
	interval := time.Duration(lc.Interval)
	if interval == 0 {
		interval = 10 * time.Second
	}
	if interval < time.Second {
		return nil, fmt.Errorf("interval: %s is below the minimum of 1s", interval)
	}
	timeout := time.Duration(lc.Timeout)
	if timeout == 0 {
		timeout = min(interval, 10*time.Second)
	}
	if timeout <= 0 || timeout > interval {
		return nil, fmt.Errorf("timeout: %s must be positive and at most the interval (%s)", timeout, interval)
	}
	spec := &agentv1.CheckSpec{Id: LocalPrefix + lc.Name, Interval: durationpb.New(interval), Timeout: durationpb.New(timeout)}
	set := 0
	for _, p := range []bool{lc.Process != nil, lc.Disk != nil, lc.TCP != nil, lc.HTTP != nil, lc.Command != nil, lc.Service != nil} {
		if p {
			set++
		}
	}
	if set > 1 {
		return nil, fmt.Errorf("only the %q section may be set for a check of type %q", lc.Type, lc.Type)
	}
	missing := func() error { return fmt.Errorf("type %s needs a %q section", lc.Type, lc.Type) }
	switch lc.Type {
	case "process":
		if lc.Process == nil {
			return nil, missing()
		}
		if (lc.Process.Name == "") == (lc.Process.Pidfile == "") {
			return nil, fmt.Errorf("process: set exactly one of name or pidfile")
		}
		if lc.Process.Pidfile != "" && !filepath.IsAbs(lc.Process.Pidfile) {
			return nil, fmt.Errorf("process.pidfile: %q must be an absolute path", lc.Process.Pidfile)
		}
		spec.Check = &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Name: lc.Process.Name, Pidfile: lc.Process.Pidfile}}
	case "disk":
		if lc.Disk == nil {
			return nil, missing()
		}
		if !filepath.IsAbs(lc.Disk.Path) {
			return nil, fmt.Errorf("disk.path: %q must be an absolute path", lc.Disk.Path)
		}
		if lc.Disk.MaxUsedPercent <= 0 || lc.Disk.MaxUsedPercent > 100 {
			return nil, fmt.Errorf("disk.maxUsedPercent: %v must be in (0, 100]", lc.Disk.MaxUsedPercent)
		}
		spec.Check = &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: lc.Disk.Path, MaxUsedPercent: lc.Disk.MaxUsedPercent}}
	case "tcp":
		if lc.TCP == nil {
			return nil, missing()
		}
		host, port, err := net.SplitHostPort(lc.TCP.Address)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("tcp.address: %q: want host:port with a port from 1 to 65535", lc.TCP.Address)
		}
		spec.Check = &agentv1.CheckSpec_Tcp{Tcp: &agentv1.TcpCheck{Address: lc.TCP.Address}}
	case "http":
		if lc.HTTP == nil {
			return nil, missing()
		}
		u, err := url.Parse(lc.HTTP.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("http.url: %q: want an absolute http or https URL", lc.HTTP.URL)
		}
		st := lc.HTTP.ExpectStatus
		if st == 0 && !lc.HTTP.expectSet {
			st = 200
		}
		if st < 100 || st > 599 {
			return nil, fmt.Errorf("http.expectStatus: %d is not an HTTP status", st)
		}
		spec.Check = &agentv1.CheckSpec_Http{Http: &agentv1.HttpCheck{Url: lc.HTTP.URL, ExpectStatus: st}}
	case "command":
		if lc.Command == nil {
			return nil, missing()
		}
		if len(lc.Command.Argv) == 0 || !filepath.IsAbs(lc.Command.Argv[0]) {
			return nil, fmt.Errorf("command.argv: want a non-empty argv whose first element is an absolute path")
		}
		spec.Check = &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: lc.Command.Argv}}
	case "service":
		if lc.Service == nil || strings.TrimSpace(lc.Service.Name) == "" {
			return nil, fmt.Errorf("service.name: required")
		}
		spec.Check = &agentv1.CheckSpec_Service{Service: &agentv1.ServiceCheck{Name: lc.Service.Name}}
	case "":
		return nil, fmt.Errorf("type: required (one of process, disk, tcp, http, command, service)")
	default:
		return nil, fmt.Errorf("type: unknown check type %q (want one of process, disk, tcp, http, command, service)", lc.Type)
	}
	return spec, nil
}

// Specs converts every local check.
func (c *Config) Specs() ([]*agentv1.CheckSpec, error) {
	out := make([]*agentv1.CheckSpec, 0, len(c.Checks))
	for _, lc := range c.Checks {
		s, err := lc.Spec()
		if err != nil {
			return nil, fmt.Errorf("check %s: %w", lc.Name, err)
		}
		out = append(out, s)
	}
	return out, nil
}
