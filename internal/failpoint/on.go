//go:build failpoints

package failpoint

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"
)

// Enabled reports whether this binary was built with the failpoints tag.
const Enabled = true

type point struct {
	name  string
	mu    sync.Mutex
	terms []Term
	fired []int // per term
}

// points is set once, before main, from TEND_FAILPOINTS; it is only read
// afterwards.
var points map[string]*point

func init() {
	if err := setup(os.Getenv(EnvVar)); err != nil {
		fmt.Fprintln(os.Stderr, LogPrefix+err.Error())
		os.Exit(2)
	}
}

func setup(spec string) error {
	parsed, err := Parse(spec)
	if err != nil {
		return err
	}
	points = map[string]*point{}
	for name, terms := range parsed {
		points[name] = &point{name: name, terms: terms, fired: make([]int, len(terms))}
	}
	return nil
}

// Inject evaluates the failpoint name (see the package comment).
func Inject(name string) {
	if p := points[name]; p != nil {
		p.eval()
	}
}

// InjectAsync evaluates the failpoint name on a new goroutine, so that the
// caller goes on (exit(D) then fires D after the caller passed the marker).
func InjectAsync(name string) {
	if p := points[name]; p != nil {
		go p.eval()
	}
}

// next picks the term of this hit and uses it up, or returns false.
func (p *point) next() (Term, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, t := range p.terms {
		if t.Count > 0 && p.fired[i] >= t.Count {
			continue
		}
		if t.Percent < 100 && rand.IntN(100) >= t.Percent {
			return Term{}, false
		}
		p.fired[i]++
		return t, true
	}
	return Term{}, false
}

func (p *point) eval() {
	t, ok := p.next()
	if !ok || t.Action == ActionOff {
		return
	}
	say := func(what string) { fmt.Fprintf(os.Stderr, "%s%s: %s\n", LogPrefix, p.name, what) }
	what := Term{Percent: 100, Action: t.Action, Delay: t.Delay, Message: t.Message}.String()
	switch t.Action {
	case ActionPrint:
		say("hit")
	case ActionSleep:
		say(what)
		time.Sleep(t.Delay)
	case ActionPanic:
		say(what)
		panic(fmt.Sprintf("failpoint %s: %s", p.name, t.Message))
	case ActionExit:
		time.Sleep(t.Delay)
		say("exit (SIGKILL)")
		kill()
	}
}

// kill ends the process as kill -9 would.
func kill() {
	if self, err := os.FindProcess(os.Getpid()); err == nil {
		_ = self.Kill()
	}
	time.Sleep(time.Second)
	os.Exit(137) // not reached: SIGKILL cannot be caught
}
