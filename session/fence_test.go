package session

import "testing"

func TestStripCodeFence(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "print(1)", "print(1)"},
		{"plain multi-line kept verbatim", "  x = 1\nprint(x)\n", "  x = 1\nprint(x)\n"},
		{"python", "```python\nprint(1)\n```", "print(1)"},
		{"py", "```py\nprint(1)\n```", "print(1)"},
		{"bare", "```\nprint(1)\n```", "print(1)"},
		{"Python upper", "```Python\nprint(1)\n```", "print(1)"},
		{"python3", "```python3\nprint(1)\n```", "print(1)"},
		{"surrounding space", "\n\n  ```python  \nprint(1)\n```  \n\n", "print(1)"},
		{"space before lang", "``` python\nprint(1)\n```", "print(1)"},
		{"indentation kept", "```python\nif x:\n    y()\n```", "if x:\n    y()"},
		{"crlf", "```python\r\nprint(1)\r\n```\r\n", "print(1)"},
		{"closing glued to code", "```python\nprint(1)```", "print(1)"},
		{"four backticks", "````python\nprint('```')\n````", "print('```')"},
		{"empty block", "```python\n```", ""},
		{"inner blank lines", "```python\n\nx = 1\n\n```", "\nx = 1\n"},
		{"two blocks", "```python\na = 1\n```\ntext\n```python\nb = 2\n```", "```python\na = 1\n```\ntext\n```python\nb = 2\n```"},
		{"other language", "```bash\nls\n```", "```bash\nls\n```"},
		{"no closing fence", "```python\nprint(1)\n", "```python\nprint(1)\n"},
		{"single line", "```print(1)```", "```print(1)```"},
		{"fence in middle", "x = 1\n```python\ny\n```", "x = 1\n```python\ny\n```"},
		{"closing longer than opening", "```python\nx\n````", "```python\nx\n````"},
		{"backticks in code", "s = '``'\nprint(s)", "s = '``'\nprint(s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := stripCodeFence(tt.in); got != tt.want {
				t.Errorf("stripCodeFence(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
