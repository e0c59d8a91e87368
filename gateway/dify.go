package gateway

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/codegw/codegw"
)

// Dify network policies (Config.DifyNetwork): what a run asking for
// "enable_network": true gets. Dify's code node always asks for it.
const (
	// DifyNetworkRefuse answers such runs with dify-sandbox's own refusal,
	// "network is disabled, please enable it in the configuration".
	DifyNetworkRefuse = "refuse"
	// DifyNetworkOffline runs them without network, as every kernel runs.
	DifyNetworkOffline = "offline"
	// DifyNetworkAllow runs them on kernels that have a network (Docker
	// executors whose DOCKER_NETWORK_MODE is not "none").
	DifyNetworkAllow = "allow"
)

// difyNetworkDisabled is dify-sandbox's message for a refused network
// request (internal/service/check.go), which Dify shows in the code node.
const difyNetworkDisabled = "network is disabled, please enable it in the configuration"

// difyAnswer is dify-sandbox's envelope: code 0 and message "success" with
// data, or a negative code and the message.
type difyAnswer struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data"`
}

// difyRun is the data of a /v1/sandbox/run answer, as dify-sandbox's
// RunCodeResponse: error is empty unless the run failed, and then starts
// with "process exited with code N".
type difyRun struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	Error    string `json:"error"`
	ExitCode int    `json:"exit_code"`
}

// difyRoutes mounts dify-sandbox's API: GET /health, and under
// /v1/sandbox (X-Api-Key): POST run, GET dependencies, GET
// dependencies/refresh, POST dependencies/update.
func (s *Server) difyRoutes() {
	s.app.Get("/health", func(c *fiber.Ctx) error { return c.JSON("ok") })
	g := s.app.Group("/v1/sandbox", s.difyAuth, s.limitRate)
	g.Post("/run", s.difyRun)
	g.Get("/dependencies", s.difyDependencies)
	g.Get("/dependencies/refresh", s.difyDependencies)
	g.Post("/dependencies/update", func(c *fiber.Ctx) error {
		return c.JSON(difyAnswer{Message: "success", Data: fiber.Map{}})
	})
}

// difyFail answers a refusal with HTTP status and dify-sandbox's envelope
// (code is its negative code; message also under "error").
func difyFail(c *fiber.Ctx, status, code int, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	return c.Status(status).JSON(fiber.Map{"code": code, "message": msg, "data": nil, "error": msg})
}

// keyOwner returns the owner of an API key, and whether it is known. With
// no keys configured every caller is "anonymous".
func (s *Server) keyOwner(key string) (string, bool) {
	if len(s.keys) == 0 {
		return "anonymous", true
	}
	if key == "" {
		return "", false
	}
	sum := sha256.Sum256([]byte(key))
	hexSum := hex.EncodeToString(sum[:])
	for h, owner := range s.keys {
		if subtle.ConstantTimeCompare([]byte(h), []byte(hexSum)) == 1 {
			return owner, true
		}
	}
	return "", false
}

// apiKeyHeader is the key sent the way Dify and LibreChat send it:
// X-Api-Key, else a Bearer authorization.
func apiKeyHeader(c *fiber.Ctx) string {
	if key := c.Get("X-Api-Key"); key != "" {
		return key
	}
	if scheme, rest, ok := strings.Cut(c.Get(fiber.HeaderAuthorization), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(rest)
	}
	return ""
}

// difyAuth admits callers by X-Api-Key, as dify-sandbox does (a Bearer
// header works too), answering 401 otherwise.
func (s *Server) difyAuth(c *fiber.Ctx) error {
	key := apiKeyHeader(c)
	o, ok := s.keyOwner(key)
	if !ok {
		if key == "" {
			return difyFail(c, fiber.StatusUnauthorized, -401, "missing API key: send X-Api-Key")
		}
		return difyFail(c, fiber.StatusUnauthorized, -401, "unknown API key")
	}
	c.Locals("owner", o)
	return c.Next()
}

// difyRequest is the body of /v1/sandbox/run.
type difyRequest struct {
	Language      *string `json:"language"`
	Code          *string `json:"code"`
	Preload       string  `json:"preload"`
	EnableNetwork bool    `json:"enable_network"`
}

// decodeDifyRun parses a /v1/sandbox/run body: language and code are
// required, the language python3 or nodejs (else dify-sandbox's
// "unsupported language").
func decodeDifyRun(body []byte) (difyRequest, error) {
	var req difyRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return req, codegw.Errorf(codegw.EINVALID, "request body is not a JSON object like {\"language\": \"python3\", \"code\": \"...\"}: %v", err)
	}
	switch {
	case req.Language == nil || *req.Language == "":
		return req, codegw.Errorf(codegw.EINVALID, "language is required (python3 or nodejs)")
	case req.Code == nil || *req.Code == "":
		return req, codegw.Errorf(codegw.EINVALID, "code is required")
	case *req.Language != "python3" && *req.Language != "nodejs":
		return req, codegw.Errorf(codegw.EINVALID, "unsupported language")
	}
	return req, nil
}

func (s *Server) difyRun(c *fiber.Ctx) error {
	body := c.Body()
	if len(body) > s.cfg.BodyLimit {
		return difyFail(c, fiber.StatusRequestEntityTooLarge, -413, "request body is %d bytes; the limit is %d", len(body), s.cfg.BodyLimit)
	}
	req, err := decodeDifyRun(body)
	if err != nil {
		return difyFail(c, fiber.StatusBadRequest, -400, "%s", codegw.ErrorMessage(err))
	}
	if req.EnableNetwork && s.cfg.DifyNetwork != DifyNetworkOffline && s.cfg.DifyNetwork != DifyNetworkAllow {
		// dify-sandbox answers HTTP 200 with code -400; Dify shows the message.
		return c.JSON(difyAnswer{Code: -400, Message: difyNetworkDisabled +
			" (codegw: kernels have no network; set DIFY_NETWORK=offline to run these requests without it)"})
	}
	code := *req.Code
	if req.Preload != "" {
		code = req.Preload + "\n" + code
	}
	if *req.Language == "nodejs" {
		code = nodeCell(code, nil)
	} else {
		code = pythonCell(code)
	}
	release, err := s.holdExecution(c)
	if err != nil {
		return difyError(c, err)
	}
	defer release()
	timeout := s.cfg.DifyTimeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	res, err := s.cfg.Manager.ExecuteFor(c.UserContext(), owner(c), codegw.ExecuteRequest{Code: code, Timeout: timeout.Seconds()}, nil)
	if err != nil {
		return difyError(c, err)
	}
	if res.Status == codegw.StatusRejected {
		return difyFail(c, fiber.StatusServiceUnavailable, -503, "Too many requests: %s", strOr(res.Error))
	}
	return c.JSON(difyAnswer{Message: "success", Data: difyResult(res)})
}

// difyError answers an execution that did not start: over a limit or
// queue (503 with dify-sandbox's busy message, which Dify retries), a
// request fault (4xx), anything else 500.
func difyError(c *fiber.Ctx, err error) error {
	msg := codegw.ErrorMessage(err)
	switch codegw.ErrorCode(err) {
	case codegw.ELIMIT, codegw.EBUSY, codegw.EUNAVAILABLE:
		return difyFail(c, fiber.StatusServiceUnavailable, -503, "Too many requests: %s", msg)
	case codegw.ETOOLARGE:
		return difyFail(c, fiber.StatusRequestEntityTooLarge, -413, "%s", msg)
	case codegw.EINVALID:
		return difyFail(c, fiber.StatusBadRequest, -400, "%s", msg)
	}
	return err
}

func strOr(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// difyResult maps a script cell's answer to dify-sandbox's run data: a
// failed script is its exit code with its stderr (a Python traceback, or
// node's), a timeout "error: timeout" with exit code -1 (dify-sandbox
// kills the process), and a killed kernel exit code -1 with codegw's
// reason.
func difyResult(res *codegw.ExecuteResult) difyRun {
	out := difyRun{Stdout: res.Stdout, Stderr: res.Stderr, ExitCode: scriptExit(res)}
	var detail string
	switch {
	case res.Status == codegw.StatusOK:
		return out
	case res.Status == codegw.StatusError && res.EName != scriptExitName:
		detail = "error: " + res.EName + ": " + res.EValue + "\n"
	case res.Status == codegw.StatusError:
	case res.Status == codegw.StatusTimeout:
		detail = "error: timeout\n"
	default:
		detail = "error: " + strings.TrimSpace(strOr(res.Error)) + "\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "process exited with code %d", out.ExitCode)
	for _, d := range []string{detail, out.Stderr} {
		if d == "" {
			continue
		}
		if !strings.HasSuffix(b.String(), "\n") {
			b.WriteByte('\n')
		}
		b.WriteString(d)
	}
	out.Error = b.String()
	return out
}

// difyDependencies lists the Python packages of the kernels, as
// dify-sandbox lists its python3 dependencies: [{name, version}].
func (s *Server) difyDependencies(c *fiber.Ctx) error {
	if lang := c.Query("language"); lang != "python3" {
		return difyFail(c, fiber.StatusBadRequest, -400, "unsupported language")
	}
	return c.JSON(difyAnswer{Message: "success", Data: fiber.Map{"dependencies": s.packages()}})
}

// packageInfo is one installed package.
type packageInfo struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// packages reads the "packages" capability ("name==version" strings).
func (s *Server) packages() []packageInfo {
	list := []packageInfo{}
	if s.cfg.Capabilities == nil {
		return list
	}
	m, _ := s.cfg.Capabilities().(map[string]any)
	var names []string
	switch p := m["packages"].(type) {
	case []string:
		names = p
	case []any:
		for _, v := range p {
			if n, ok := v.(string); ok {
				names = append(names, n)
			}
		}
	}
	for _, n := range names {
		name, version, _ := strings.Cut(n, "==")
		list = append(list, packageInfo{Name: name, Version: version})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return list
}
