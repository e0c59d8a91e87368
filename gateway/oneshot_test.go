package gateway_test

import (
	"bytes"
	"os"
	"reflect"
	"regexp"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
)

// oneShotMaker is implemented by provisioners that make one-shot kernels.
type oneShotMaker interface{ MakesOneShots() bool }

// TestOneShotEquivalence checks that a stateless call answers the same on a
// one-shot kernel (STATELESS_KERNEL=oneshot) as on a full ipykernel
// (STATELESS_KERNEL=kernel): stdout, stderr, the result, an error and its
// traceback, rich outputs (an HTML table, markdown), two figures, an
// output file, input() and the execution count.
func TestOneShotEquivalence(t *testing.T) {
	prov := currentProvisioner(t)
	if o, ok := prov.(oneShotMaker); !ok || !o.MakesOneShots() {
		if os.Getenv("CI") == "true" && os.Getenv("CODEGW_TEST_KERNEL_START") != "spawn" {
			t.Fatal("the provisioner makes no one-shot kernels under CI")
		}
		t.Skip("the provisioner makes no one-shot kernels (spawned kernels)")
	}
	envOf := func(kind string) *env {
		return newEnv(t, envOptions{prov: prov, poolSize: 1, tune: func(c *app.Config) { c.StatelessKernel = kind }})
	}
	one, full := envOf(app.StatelessOneShot), envOf(app.StatelessFull)
	if one.app.OneShots == nil || full.app.OneShots != nil {
		t.Fatal("STATELESS_KERNEL did not choose the pools")
	}
	cells := []string{
		"print('out')\nimport sys\nprint('err', file=sys.stderr)\n6 * 7",
		"x = 1\nx",
		"def f():\n    return 1 / 0\nf()",
		"import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})",
		"import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.figure()\nplt.plot([2, 1])\nprint('plotted')",
		"from IPython.display import display, HTML, Markdown\ndisplay(HTML('<b>hi</b>'))\ndisplay(Markdown('*m*'))",
		"open('/code/output/r.csv', 'w').write('a,b\\n1,2\\n')",
		"input('name? ')",
		"raise ValueError('bad value')",
		"import json\nprint(json.dumps({'k': [1, 2]}))\n%precision 3\nimport math\nmath.pi",
		"import getpass\ngetpass.getpass()",
	}
	addr := regexp.MustCompile(`0x[0-9a-f]+`)
	for _, code := range cells {
		a, b := one.exec(map[string]any{"code": code}), full.exec(map[string]any{"code": code})
		for _, r := range []*codegw.ExecuteResult{&a, &b} {
			r.ExecutionTime = 0
			for i := range r.Outputs {
				r.Outputs[i].URL = ""
				r.Outputs[i].Text = addr.ReplaceAllString(r.Outputs[i].Text, "0x")
			}
			for i := range r.Files {
				r.Files[i].URL, r.Files[i].Filename = "", ""
			}
			r.Result = addr.ReplaceAllString(r.Result, "0x")
			if len(r.Images) > 0 {
				for i, u := range r.Images {
					_, _, png := one.get(u)
					if st, _, png2 := full.get(u); st == 200 {
						png = png2
					}
					if !bytes.HasPrefix(png, []byte("\x89PNG")) {
						t.Errorf("%q: image %d is not a PNG", code, i)
					}
				}
				r.Images = make([]string, len(r.Images))
				r.ImageURL = nil
			}
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%q answers differ:\none-shot: %+v\nkernel:   %+v", code, a, b)
		}
	}
}

// TestOneShotStreamsUnflushed: what a one-shot cell prints without
// flushing reaches the caller while the cell still runs (the child's
// flusher, which starts once a cell runs a while), not at its end.
func TestOneShotStreamsUnflushed(t *testing.T) {
	prov := currentProvisioner(t)
	requireOneShots(t, prov)
	e := newEnv(t, envOptions{poolSize: 1})
	done := e.streamUntil(t, map[string]any{"code": "import time\nprint('early')\ntime.sleep(4)\nprint('late')"}, "early")
	seen := time.Now()
	res := <-done
	if res.Status != codegw.StatusOK || res.Stdout != "early\nlate\n" {
		t.Fatalf("%s %s %q", res.Status, strOr(res.Error), res.Stdout)
	}
	// Without the flusher 'early' would come with 'late', at the end.
	if gap := time.Since(seen); gap < 2*time.Second {
		t.Errorf("'early' reached the caller only %v before the answer: not streamed while the cell ran", gap)
	}
}
