package policy

import (
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"tend.dev/tend/internal/when"
)

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	actionRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*$`)
)

// checkExamples show what each check sub-object looks like, for "required"
// messages.
var checkExamples = map[string]string{
	CheckProcess: `{name: nginx} or {pidfile: /run/nginx.pid}`,
	CheckDisk:    `{path: /, maxUsedPercent: 90}`,
	CheckTCP:     `{address: "127.0.0.1:5432"}`,
	CheckHTTP:    `{url: "http://127.0.0.1:8080/healthz", expectStatus: 200}`,
	CheckCommand: `{argv: ["/usr/lib/nagios/plugins/check_load", "-w", "5"]}`,
	CheckService: `{name: nginx.service}`,
}

func checkTypeList() string { return strings.Join(CheckTypes, ", ") }

// validate records every problem of one decoded document. It only reads p.
func (d *docDecoder) validate(p *Policy) {
	switch {
	case !d.present("apiVersion"):
		d.add("apiVersion", "required field missing (want %q)", APIVersion)
	case p.APIVersion != APIVersion:
		d.add("apiVersion", "unsupported apiVersion %q (want %q)", p.APIVersion, APIVersion)
	}
	switch {
	case !d.present("kind"):
		d.add("kind", "required field missing (want %q)", Kind)
	case p.Kind != Kind:
		d.add("kind", "unsupported kind %q (want %q)", p.Kind, Kind)
	}
	switch name := p.Metadata.Name; {
	case name == "":
		d.add("metadata.name", "required field missing: a lowercase name such as web-nginx-down")
	case len(name) > maxNameLen || !nameRE.MatchString(name):
		d.add("metadata.name", "invalid name %q: use at most %d lowercase letters, digits and '-', starting and ending with a letter or digit", name, maxNameLen)
	}
	if !d.present("spec") {
		d.add("spec", "required field missing: selector, check and trigger at least")
		return
	}
	s := &p.Spec

	// Selector.
	if len(s.Selector.MatchLabels) == 0 {
		field := "spec.selector.matchLabels"
		if !d.present("spec.selector") {
			field = "spec.selector"
		}
		d.add(field, `required: an empty selector is an error, not "all" (set matchLabels, e.g. {role: web})`)
	}
	for _, k := range sortedKeys(s.Selector.MatchLabels) {
		if strings.TrimSpace(k) == "" {
			d.add(keyPath("spec.selector.matchLabels", k), "empty label name")
		}
	}

	switch s.Mode {
	case "", ModeEnforce, ModeShadow:
	default:
		d.add("spec.mode", "unknown mode %q (want enforce or shadow)", s.Mode)
	}

	if o := s.Offline; o != nil {
		if !s.Autonomous {
			d.add("spec.offline", "only means something with autonomous: true")
		}
		if d.present("spec.offline.after") && (o.After < Duration(5*time.Second) || o.After > Duration(24*time.Hour)) {
			d.add("spec.offline.after", "must be from 5s to 24h, got %s", o.After)
		}
		if d.present("spec.offline.maxPerHour") && (o.MaxPerHour < 1 || o.MaxPerHour > 60) {
			d.add("spec.offline.maxPerHour", "must be from 1 to 60, got %d", o.MaxPerHour)
		}
		if d.present("spec.offline.validFor") && (o.ValidFor < Duration(time.Minute) || o.ValidFor > Duration(7*24*time.Hour)) {
			d.add("spec.offline.validFor", "must be from 1m to 168h, got %s", o.ValidFor)
		}
	}
	if s.Autonomous && s.Remediation == nil {
		d.add("spec.autonomous", "an autonomous policy needs a remediation to run")
	}
	if s.Autonomous && s.Remediation != nil && s.Remediation.RequireApproval {
		d.add("spec.autonomous", "cannot be combined with requireApproval: nobody can approve while the control plane is away")
	}
	if s.Autonomous && strings.TrimSpace(s.Trigger.When) != "" {
		d.add("spec.trigger.when", "cannot be combined with autonomous: true: an agent acting alone counts only CRITICAL results and does not evaluate when expressions (tend-agent does not embed CEL); remove when, or autonomous")
	}
	d.validateCheck(&s.Check)
	d.validateTrigger(&s.Trigger)
	if s.Remediation != nil {
		d.validateRemediation(s.Remediation)
	}
	if l := s.Limits; l != nil {
		if d.present("spec.limits.maxConcurrent") {
			if _, _, ok := l.MaxConcurrent.parse(); !ok {
				d.add("spec.limits.maxConcurrent", `want a positive number such as 3 or a percent from 1%% to 100%% such as "10%%", got %q`, string(l.MaxConcurrent))
			}
		}
		if d.present("spec.limits.maxPerHour") && l.MaxPerHour < 1 {
			d.add("spec.limits.maxPerHour", "must be at least 1 (leave it out for no limit), got %d", l.MaxPerHour)
		}
		if b := l.Breaker; b != nil {
			if b.Failures < 0 || b.Failures > 1000 {
				d.add("spec.limits.breaker.failures", "must be from 0 (off) to 1000, got %d", b.Failures)
			}
			if d.present("spec.limits.breaker.window") && (b.Window <= 0 || b.Window > Duration(7*24*time.Hour)) {
				d.add("spec.limits.breaker.window", "must be greater than 0 and at most 168h, got %s", b.Window)
			}
		}
		if c := l.Correlation; c != nil {
			if c.Percent < 0 || c.Percent > 100 {
				d.add("spec.limits.correlation.percent", "must be from 0 (off) to 100, got %d", c.Percent)
			}
			if d.present("spec.limits.correlation.window") && (c.Window <= 0 || c.Window > Duration(24*time.Hour)) {
				d.add("spec.limits.correlation.window", "must be greater than 0 and at most 24h, got %s", c.Window)
			}
			if d.present("spec.limits.correlation.minAgents") && c.MinAgents < 1 {
				d.add("spec.limits.correlation.minAgents", "must be at least 1, got %d", c.MinAgents)
			}
		}
	}
	if e := s.Escalate; e != nil && d.present("spec.escalate.webhook") {
		if msg := checkHTTPURL(e.Webhook); msg != "" {
			d.add("spec.escalate.webhook", "%s", msg)
		}
	}
}

func (d *docDecoder) validateCheck(c *Check) {
	const base = "spec.check"
	if !d.present(base) {
		d.add(base, "required field missing: the health check agents run (type: one of %s)", checkTypeList())
		return
	}
	subs := map[string]bool{
		CheckProcess: c.Process != nil,
		CheckDisk:    c.Disk != nil,
		CheckTCP:     c.TCP != nil,
		CheckHTTP:    c.HTTP != nil,
		CheckCommand: c.Command != nil,
		CheckService: c.Service != nil,
	}
	switch {
	case c.Type == "":
		hint := ""
		var set []string
		for _, t := range CheckTypes {
			if subs[t] {
				set = append(set, t)
			}
		}
		if len(set) == 1 {
			hint = "; spec.check." + set[0] + " is set, so probably type: " + set[0]
		}
		d.add(base+".type", "required field missing (want one of %s)%s", checkTypeList(), hint)
	case !slices.Contains(CheckTypes, c.Type):
		d.add(base+".type", "unknown check type %q (want one of %s)", c.Type, checkTypeList())
	default:
		for _, t := range CheckTypes {
			if t != c.Type && subs[t] {
				d.add(base+"."+t, "not allowed with type %q: set only spec.check.%s", c.Type, c.Type)
			}
		}
		if !subs[c.Type] {
			d.add(base+"."+c.Type, "required for check type %q, e.g. %s: %s", c.Type, c.Type, checkExamples[c.Type])
		} else {
			d.validateCheckParams(c)
		}
	}

	interval := DefaultInterval
	if d.present(base + ".interval") {
		interval = c.Interval.D()
		if interval < MinInterval {
			d.add(base+".interval", "must be at least %s, got %s", Duration(MinInterval), c.Interval)
		}
	}
	if d.present(base + ".timeout") {
		switch t := c.Timeout.D(); {
		case t <= 0:
			d.add(base+".timeout", "must be greater than 0, got %s", c.Timeout)
		case t > interval && interval >= MinInterval:
			d.add(base+".timeout", "must not be longer than the interval (%s), got %s", Duration(interval), c.Timeout)
		}
	}
}

func (d *docDecoder) validateCheckParams(c *Check) {
	const base = "spec.check"
	switch c.Type {
	case CheckProcess:
		p, f := base+".process", c.Process
		switch {
		case f.Name != "" && f.Pidfile != "":
			d.add(p, "set exactly one of name and pidfile, not both")
		case f.Name == "" && f.Pidfile == "":
			d.add(p, "set one of name or pidfile, e.g. %s", checkExamples[CheckProcess])
		case d.templated(p+".pidfile", f.Pidfile) || d.templated(p+".name", f.Name):
		case f.Pidfile != "" && !path.IsAbs(f.Pidfile):
			d.add(p+".pidfile", "must be an absolute path, got %q", f.Pidfile)
		}
	case CheckDisk:
		p, f := base+".disk", c.Disk
		switch {
		case f.Path == "":
			d.add(p+".path", "required field missing: the absolute path of a directory on the filesystem to watch")
		case d.templated(p+".path", f.Path):
		case !path.IsAbs(f.Path):
			d.add(p+".path", "must be an absolute path, got %q", f.Path)
		}
		switch {
		case !d.present(p + ".maxUsedPercent"):
			d.add(p+".maxUsedPercent", "required field missing: the highest acceptable use in percent (0 < maxUsedPercent <= 100)")
		case !(f.MaxUsedPercent > 0 && f.MaxUsedPercent <= 100):
			d.add(p+".maxUsedPercent", "must be greater than 0 and at most 100, got %v", f.MaxUsedPercent)
		}
	case CheckTCP:
		p := base + ".tcp.address"
		if c.TCP.Address == "" {
			d.add(p, "required field missing: host:port, e.g. 127.0.0.1:5432")
			return
		}
		if d.templated(p, c.TCP.Address) {
			return
		}
		if msg := checkHostPort(c.TCP.Address); msg != "" {
			d.add(p, "%s", msg)
		}
	case CheckHTTP:
		p, f := base+".http", c.HTTP
		if f.URL == "" {
			d.add(p+".url", "required field missing: an absolute http:// or https:// URL")
		} else if d.templated(p+".url", f.URL) {
		} else if msg := checkHTTPURL(f.URL); msg != "" {
			d.add(p+".url", "%s", msg)
		}
		if d.present(p+".expectStatus") && (f.ExpectStatus < 100 || f.ExpectStatus > 599) {
			d.add(p+".expectStatus", "must be an HTTP status from 100 to 599, got %d", f.ExpectStatus)
		}
	case CheckCommand:
		p, f := base+".command.argv", c.Command
		switch {
		case len(f.Argv) == 0:
			d.add(p, "required field missing: a non-empty list whose first item is an absolute path (commands never run through a shell)")
		case d.templatedList(p, f.Argv):
		case !path.IsAbs(f.Argv[0]):
			d.add(p+"[0]", "must be an absolute path (commands never run through a shell or $PATH), got %q", f.Argv[0])
		}
	case CheckService:
		if d.templated(base+".service.name", c.Service.Name) {
			return
		}
		if strings.TrimSpace(c.Service.Name) == "" {
			d.add(base+".service.name", "required field missing: the systemd unit, e.g. nginx.service")
		}
	}
}

// checkHostPort returns what is wrong with a host:port, or "".
func checkHostPort(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "want host:port (e.g. 127.0.0.1:5432 or [::1]:5432), got " + strconv.Quote(addr)
	}
	if host == "" {
		return "host is empty in " + strconv.Quote(addr) + " (want host:port, e.g. 127.0.0.1:5432)"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "port must be a number from 1 to 65535, got " + strconv.Quote(port)
	}
	return ""
}

// checkHTTPURL returns what is wrong with an http(s) URL, or "".
func checkHTTPURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "want an absolute http:// or https:// URL, got " + strconv.Quote(s)
	}
	return ""
}

// effectiveTrigger returns failures and window with defaults: failures 3
// (at most the window), window 5 (at least failures).
func (d *docDecoder) effectiveTrigger(t *Trigger) (failures, window int) {
	fSet, wSet := d.present("spec.trigger.failures"), d.present("spec.trigger.window")
	failures, window = t.Failures, t.Window
	switch {
	case fSet && wSet:
	case fSet:
		window = max(DefaultWindow, failures)
	case wSet:
		failures = min(DefaultFailures, window)
	default:
		failures, window = DefaultFailures, DefaultWindow
	}
	return failures, window
}

func (d *docDecoder) validateTrigger(t *Trigger) {
	const base = "spec.trigger"
	fSet, wSet := d.present(base+".failures"), d.present(base+".window")
	if fSet && t.Failures < 1 {
		d.add(base+".failures", "must be at least 1, got %d", t.Failures)
	}
	if wSet && (t.Window < 1 || t.Window > MaxWindow) {
		d.add(base+".window", "must be from 1 to %d, got %d", MaxWindow, t.Window)
		return
	}
	failures, window := d.effectiveTrigger(t)
	if failures >= 1 && window < failures {
		d.add(base+".window", "must be at least failures (%d), got %d", failures, window)
	}
	if window > MaxWindow {
		d.add(base+".failures", "must be at most %d (the largest window), got %d", MaxWindow, failures)
	}
	if strings.TrimSpace(t.When) != "" {
		if err := when.Validate(t.When); err != nil {
			d.add(base+".when", "%v", err)
		}
	}
}

func (d *docDecoder) validateRemediation(r *Remediation) {
	const base = "spec.remediation"
	switch plugin, action, _ := strings.Cut(r.Action, "."); {
	case r.Action == "":
		d.add(base+".action", "required field missing: <plugin>.<action>, e.g. process.restart")
	case !actionRE.MatchString(r.Action):
		d.add(base+".action", "invalid action %q: want <plugin>.<action> in lowercase, e.g. process.restart", r.Action)
	default:
		if known, ok := KnownActions[plugin]; ok && !slices.Contains(known, action) {
			d.add(base+".action", "unknown action %q: plugin %s has %s", r.Action, plugin, strings.Join(prefixAll(plugin+".", known), ", "))
		}
	}
	positive := func(field string, v Duration) {
		if d.present(base+field) && v <= 0 {
			d.add(base+field, "must be greater than 0, got %s", v)
		}
	}
	notNegative := func(field string, v Duration) {
		if d.present(base+field) && v < 0 {
			d.add(base+field, "must not be negative, got %s", v)
		}
	}
	positive(".timeout", r.Timeout)
	if r.Timeout > Duration(time.Hour) {
		d.add(base+".timeout", "must be at most 1h (a task that runs longer cannot be signed), got %s", r.Timeout)
	}
	if d.present(base+".maxAttempts") && r.MaxAttempts > 100 {
		d.add(base+".maxAttempts", "must be at most 100, got %d", r.MaxAttempts)
	}
	positive(".verify.within", r.Verify.Within)
	notNegative(".backoff", r.Backoff)
	positive(".approvalTimeout", r.ApprovalTimeout)
	if r.ApprovalTimeout > Duration(7*24*time.Hour) {
		d.add(base+".approvalTimeout", "must be at most 168h, got %s", r.ApprovalTimeout)
	}
	if d.present(base+".approvalTimeout") && !r.RequireApproval {
		d.add(base+".approvalTimeout", "only means something with requireApproval: true")
	}
	notNegative(".cooldown", r.Cooldown)
	if d.present(base+".maxAttempts") && r.MaxAttempts < 1 {
		d.add(base+".maxAttempts", "must be at least 1, got %d", r.MaxAttempts)
	}
	d.validateParams(r)
}

func prefixAll(prefix string, s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = prefix + v
	}
	return out
}

// applyDefaults fills in every field left out, so that the stored spec says
// everything explicitly. It runs on valid documents (and harmlessly on
// invalid ones, which are dropped).
func (d *docDecoder) applyDefaults(p *Policy) {
	s := &p.Spec
	if s.Mode == "" {
		s.Mode = ModeEnforce
	}
	c := &s.Check
	if !d.present("spec.check.interval") {
		c.Interval = Duration(DefaultInterval)
	}
	if !d.present("spec.check.timeout") {
		c.Timeout = Duration(min(c.Interval.D(), DefaultMaxTimeout))
	}
	if c.HTTP != nil && !d.present("spec.check.http.expectStatus") {
		c.HTTP.ExpectStatus = DefaultExpectStatus
	}
	s.Trigger.Failures, s.Trigger.Window = d.effectiveTrigger(&s.Trigger)
	if r := s.Remediation; r != nil {
		const base = "spec.remediation"
		defaultDuration := func(field string, v *Duration, def time.Duration) {
			if !d.present(base + field) {
				*v = Duration(def)
			}
		}
		defaultDuration(".timeout", &r.Timeout, DefaultActionTimeout)
		defaultDuration(".verify.within", &r.Verify.Within, DefaultVerifyWithin)
		defaultDuration(".backoff", &r.Backoff, DefaultBackoff)
		defaultDuration(".cooldown", &r.Cooldown, DefaultCooldown)
		if !d.present(base + ".maxAttempts") {
			r.MaxAttempts = DefaultMaxAttempts
		}
		if r.RequireApproval {
			defaultDuration(".approvalTimeout", &r.ApprovalTimeout, DefaultApprovalTimeout)
		}
		if len(r.Params) == 0 {
			r.Params = nil
		}
	}
	if s.Autonomous {
		if s.Offline == nil {
			s.Offline = &Offline{}
		}
		if !d.present("spec.offline.after") {
			s.Offline.After = Duration(DefaultOfflineAfter)
		}
		if !d.present("spec.offline.maxPerHour") {
			s.Offline.MaxPerHour = DefaultOfflineMaxPerHour
		}
		if !d.present("spec.offline.validFor") {
			s.Offline.ValidFor = Duration(DefaultOfflineValidFor)
		}
	}
	// Breaker and correlation are on unless turned off: the stored spec
	// always says which.
	if s.Limits == nil {
		s.Limits = &Limits{}
	}
	l := s.Limits
	if l.Breaker == nil {
		l.Breaker = &Breaker{Failures: DefaultBreakerFailures}
	}
	if !d.present("spec.limits.breaker.window") {
		l.Breaker.Window = Duration(DefaultBreakerWindow)
	}
	if l.Correlation == nil {
		l.Correlation = &Correlation{Percent: DefaultCorrelationPercent}
	}
	if !d.present("spec.limits.correlation.window") {
		l.Correlation.Window = Duration(DefaultCorrelationWindow)
	}
	if !d.present("spec.limits.correlation.minAgents") {
		l.Correlation.MinAgents = DefaultCorrelationMinAgents
	}
	if e := s.Escalate; e != nil && e.Webhook == "" {
		s.Escalate = nil
	}
}
