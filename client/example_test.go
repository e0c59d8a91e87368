package client_test

import (
	"context"
	"fmt"
	"os"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/client"
)

// A one-shot execution on a fresh kernel.
func ExampleClient_Execute() {
	c, _ := client.New("http://127.0.0.1:14564", client.WithKey(os.Getenv("CODEGW_KEY")))
	res, err := c.Execute(context.Background(), codegw.ExecuteRequest{Code: "print(6*7)"})
	if err != nil {
		fmt.Println("refused:", err) // an *client.Error: errors.Is(err, client.ErrLimit)...
		return
	}
	fmt.Println(res.Status, res.Result)
}

// A session keeps its variables; Run streams the events of one execution
// over the websocket and answers input().
func ExampleConn_Run() {
	ctx := context.Background()
	c, _ := client.New("http://127.0.0.1:14564", client.WithKey(os.Getenv("CODEGW_KEY")))
	s, err := c.CreateSession(ctx, client.SessionOptions{})
	if err != nil {
		return
	}
	defer s.Delete(ctx)
	conn, err := s.Connect(ctx, client.ConnectOptions{})
	if err != nil {
		return
	}
	defer conn.Close()
	res, err := conn.Run(ctx, codegw.ExecuteRequest{Code: "import matplotlib.pyplot as plt\nname = input('name? ')\nprint('hi', name)\nplt.plot([1, 3, 2]); plt.show()"}, client.Handler{
		Stdout: func(text string) { fmt.Print(text) },
		Input:  func(prompt string, password bool) (string, error) { return "gopher", nil },
		Display: func(d client.Display) {
			if d.Image != nil {
				os.WriteFile("plot.png", d.Image, 0o644)
			}
		},
	})
	if err == nil {
		fmt.Println(res.Status, res.ExecutionCount)
	}
}
