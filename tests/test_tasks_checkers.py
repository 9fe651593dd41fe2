"""Answer extraction and checking for every task, on realistic completions (no data, no sandbox)."""

from __future__ import annotations

import time

import pytest

from transformer_squared.tasks import Item, get_task
from transformer_squared.tasks.arc import extract_choice
from transformer_squared.tasks.classify import extract_label
from transformer_squared.tasks.code import extract_code, humaneval_program
from transformer_squared.tasks.competition_math import extract_math_answer
from transformer_squared.tasks.gsm8k import clean_solution, extract_number, numbers_equal
from transformer_squared.tasks.latex import answers_equal


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("T2_CACHE_DIR", str(tmp_path_factory.mktemp("t2cache")))


# --------------------------------------------------------------------------- GSM8K

GSM8K_CASES = [
    ("Janet has 16 - 3 - 4 = 9 eggs. She sells them for 9 * 2 = $18.\nThe answer is 18.", "18"),
    ("She makes 9 * 2 = <<9*2=18>>18 dollars.\n#### 18", "18"),
    ("So the total is $1,000.\nThe answer is $1,000.", "1000"),
    ("Step 1: 5 + 5 = 10\nStep 2: 10 * 3 = 30\nTherefore, the final answer is \\boxed{30}.", "30"),
    ("The answer is: 42", "42"),
    ("**Answer:** 7", "7"),
    ("He loses 3 degrees each hour, so after 5 hours the change is -15.\nThe answer is -15.", "-15"),
    ("The price per pound is 2.50 dollars.\nThe answer is 2.5.", "2.5"),
    ("She needs 12 cups in total. The answer is 12 cups.", "12"),
    ("Total = 3 x 4 = 12 apples. So she has 12 apples left", "12"),
    ("The answer is 5.0", "5"),
    ("#### 1,234,567", "1234567"),
    ("Let's compute: 20% of 50 is 10.\nThe answer is 10%.", "10"),
    ("The answer is $\\$18$.", "18"),
    ("We get 100 - 25 = 75.\nAnswer: 75 minutes", "75"),
    ("Final Answer: The final answer is $44$. I hope it is correct.", "44"),
    ("The answer is 0.75.", "0.75"),
    ("He ran 3 miles on Monday, 4 on Tuesday and 5 on Wednesday, for 12 miles.", "12"),
    ("The answer is \\boxed{1,500}", "1500"),
    ("The answer is −4.", "-4"),
    ("So 10-3 = 7", "7"),
    ("The answer is 18. (Earlier I wrote 17 by mistake.)", "18"),
    ("#### 18\n\nQuestion: another question with 99 items", "18"),
    ("Each box has 12 pens, so 3 boxes hold 36 pens.\n\nThe final answer is 36", "36"),
    ("He has 4 apples.\nThe answer is: $\\boxed{4}$", "4"),
    ("Answer = 250", "250"),
    ("In total: 2 + 3 = 5 hours\n\n**Final Answer**: 5", "5"),
    ("The answer is 1,200.50", "1200.5"),
    ("Therefore, Tom needs 3 more hours. The answer is 3 hours.", "3"),
    ("The answer would be 64 marbles.", "64"),
]
GSM8K_NONE = ["", "I don't know how to solve this problem.", "Let's think step by step about the farmer's eggs."]


@pytest.mark.parametrize("completion,expected", GSM8K_CASES)
def test_gsm8k_extract(completion, expected):
    assert extract_number(completion) == expected


@pytest.mark.parametrize("completion", GSM8K_NONE)
def test_gsm8k_no_answer(completion):
    assert extract_number(completion) is None


def test_gsm8k_numeric_equality_and_rewards():
    assert numbers_equal("5", "5.0") and numbers_equal("1,000", "1000") and numbers_equal("-3", "-3.00")
    assert not numbers_equal("5", "6") and not numbers_equal(None, "5") and not numbers_equal("abc", "5")
    task = get_task("gsm8k", reward_correct=2.0, reward_wrong=-0.5)
    item = Item(id="x", question="q", answer="18")
    completions = ["The answer is 18.", "The answer is 17.", "no idea", "#### 18.00"]
    assert [task.is_correct(item, c) for c in completions] == [True, False, False, True]
    assert task.rewards([item] * 4, completions) == [2.0, -0.5, -0.5, 2.0]
    assert task.reward(item, "The answer is $18") == 2.0
    with pytest.raises(ValueError):
        task.rewards([item], [])


def test_gsm8k_clean_solution():
    ref = clean_solution("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18")
    assert ref == "She makes 9 * 2 = $18 every day.\nThe answer is 18."
    assert extract_number(ref) == "18"


# --------------------------------------------------------------------------- MATH

MATH_CASES = [  # (completion, gold, correct?)
    ("We find $x = 2$ and $x=-3$, so there are $\\boxed{2}$ vertical asymptotes.", "2", True),
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "\\frac12", True),
    ("Thus the probability is $\\boxed{\\dfrac{3}{4}}$.", "\\frac{3}{4}", True),
    ("so $\\boxed{0.75}$", "\\frac{3}{4}", True),
    ("The domain is $\\boxed{[2,5)}$.", "[2,5)", True),
    ("The domain is $\\boxed{(2,5)}$.", "[2,5)", False),
    ("$$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$$", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("The angle is $\\boxed{30^\\circ}$.", "30", True),
    ("Its area is $\\boxed{24\\text{ cm}^2}$", "24", True),
    ("The length is $\\boxed{2\\sqrt{2}}$", "\\sqrt{8}", True),
    ("We get $\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{1}{2}\\sqrt{3}", True),
    ("So the value is $\\boxed{3.14}$", "\\pi", False),
    ("The solutions are $\\boxed{1, -2}$.", "-2, 1", True),
    ("The solutions are $\\boxed{1, 2}$.", "-2, 1", False),
    ("$\\boxed{x^2+2x+1}$", "(x+1)^2", True),
    ("$\\boxed{x^2+2x}$", "(x+1)^2", False),
    ("Therefore $\\boxed{\\text{(C)}}$", "\\text{(C)}", True),
    ("Therefore $\\boxed{\\text{(B)}}$", "\\text{(C)}", False),
    ("So the answer is $\\boxed{x=5}$.", "5", True),
    ("The total cost is $\\boxed{\\$18.90}$", "18.90", True),
    ("This gives $\\boxed{1,000,000}$ ways.", "10^6", True),
    ("The final value is \\fbox{42}.", "42", True),
    ("nested: $\\boxed{\\frac{2^{10}}{\\sqrt{4}}}$", "512", True),
    ("$\\boxed{2\\frac{1}{2}}$", "\\frac52", True),
    ("$\\boxed{3+4i}$", "4i+3", True),
    (
        "$\\boxed{\\begin{pmatrix} 1/5 \\\\ -3/5 \\end{pmatrix}}$",
        "\\begin{pmatrix} \\frac15 \\\\ -\\frac35 \\end{pmatrix}",
        True,
    ),
    ("$\\boxed{(-\\infty,3/7]\\cup[0.6,\\infty)}$", "(-\\infty, \\frac{3}{7}] \\cup [\\frac{3}{5}, \\infty)", True),
    ("First I get \\boxed{5}, but correcting: \\boxed{6}", "6", True),
    ("First I get \\boxed{5}, but correcting: \\boxed{6}", "5", False),
    ("Final Answer: The final answer is $\\frac{2}{3}$. I hope it is correct.", "\\frac{2}{3}", True),
    ("The answer is \\boxed{\\text{Devon}}", "\\text{Devon}", True),
    ("$\\boxed{\\frac{1}{3}}$", "0.333333", False),
    ("\\boxed{25\\%}", "25", True),
    ("\\boxed 7", "7", True),
]


@pytest.mark.parametrize("completion,gold,ok", MATH_CASES)
def test_math_is_correct(completion, gold, ok):
    task = get_task("math")
    item = Item(id="m", question="q", answer=gold)
    assert task.is_correct(item, completion) is ok


@pytest.mark.parametrize(
    "completion",
    ["", "We cannot determine the value.", "The answer is 5.", "Let x be the number of apples; then 2x + 3 = 11."],
)
def test_math_no_boxed_answer(completion):
    assert extract_math_answer(completion) is None
    assert not get_task("math").is_correct(Item(id="m", question="q", answer="5"), completion)


def test_math_nested_boxed_and_pathological_inputs():
    assert extract_math_answer("x \\boxed{\\frac{a}{b^{2}}} y") == "\\frac{a}{b^{2}}"
    assert extract_math_answer("unclosed \\boxed{\\frac{1}{2}") is None
    start = time.time()
    assert not answers_equal("2^{2^{2^{2^{100}}}}", "5")
    assert not answers_equal("9^{9^{9}}", "9^{9^{9}} + 1")
    assert not answers_equal("10000!", "1")
    assert not answers_equal("(" * 300 + "1" + ")" * 300, "2")
    assert time.time() - start < 5


# --------------------------------------------------------------------------- ARC

CHOICES = ["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"]
ARC_CASES = [
    ("The answer is (A).", "A"),
    ("Rubbing dry surfaces creates the most friction. The answer is (A)", "A"),
    ("Answer: B", "B"),
    ("answer: **C**", "C"),
    ("**D**", "D"),
    ("D", "D"),
    ("C) palms covered with oil", "C"),
    ("B. wet palms, because water heats up", "B"),
    ("(A) dry palms", "A"),
    ("The correct answer is D.", "D"),
    ("The correct option is C", "C"),
    ("Option B is correct because water conducts heat.", "B"),
    ("Dry skin has more friction than wet or oily skin, so dry palms produce the most heat.", "A"),
    ("I think the answer is (B). Wait, friction is higher when dry, so the answer is (A).", "A"),
    ("\\boxed{C}", "C"),
    ("The answer is \\boxed{\\text{(B)}}", "B"),
    ("The answer is: A", "A"),
    ("Final answer: (D)", "D"),
    ("Friction matters here.\nAnswer: A", "A"),
    ("The best choice is B.", "B"),
    ("\\boxed{palms covered with oil}", "C"),
    ("The answer is [C]", "C"),
    ("Answer: (D) palms covered with lotion", "D"),
    ("ANSWER: B", "B"),
    ("The answer is A, dry palms.", "A"),
    ("(B)", "B"),
    ("**Answer: C**", "C"),
    ("My final answer is B) wet palms", "B"),
]
ARC_NONE = [
    "",
    "A plant needs sunlight to grow.",  # "A" is an article, not a choice
    "Friction produces heat when surfaces rub.",
    "It could be dry palms or wet palms.",  # two options named: no guess
    "(A) is possible but (B) is also possible.",  # marked letters disagree
    "The answer is unclear.",
    "Both B and C seem plausible.",
    "I'm not sure which option is correct.",
    "A. dry palms\nB. wet palms\nC. palms covered with oil\nD. palms covered with lotion\n\nLet me think about heat.",
]


@pytest.mark.parametrize("completion,expected", ARC_CASES)
def test_arc_extract_choice(completion, expected):
    assert extract_choice(completion, CHOICES) == expected


@pytest.mark.parametrize("completion", ARC_NONE)
def test_arc_no_choice_is_wrong(completion):
    task = get_task("arc_challenge")
    item = Item(id="a", question="q", answer="A", data={"choices": CHOICES})
    assert extract_choice(completion, CHOICES) is None
    assert task.reward(item, completion) == -1.0


def test_arc_is_correct_numeric_labels_and_letter_range():
    task = get_task("arc_easy")
    item = Item(id="a", question="q", answer="C", data={"choices": CHOICES, "orig_labels": ["1", "2", "3", "4"]})
    assert task.is_correct(item, "The answer is 3.")
    assert task.is_correct(item, "The answer is (C).")
    assert not task.is_correct(item, "The answer is 2.")
    assert not task.is_correct(item, "The answer is (E).")  # no option E
    assert task.extract("The answer is (E).") == "E"  # without the item, A-E are all letters


# --------------------------------------------------------------------------- code extraction

CODE_CASES = [  # (completion, entry point, expected code or a substring check)
    ("```python\ndef add(a, b):\n    return a + b\n```", "add", "def add(a, b):\n    return a + b"),
    (
        "Here is the function:\n\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds numbers.",
        "add",
        "def add(a, b):\n    return a + b",
    ),
    ("```py\ndef add(a, b):\n    return a + b\n```", "add", "def add(a, b):\n    return a + b"),
    ("```\ndef add(a, b):\n    return a + b\n```", "add", "def add(a, b):\n    return a + b"),
    (
        "```Python\nimport math\ndef root(x):\n    return math.sqrt(x)\n```",
        "root",
        "import math\ndef root(x):\n    return math.sqrt(x)",
    ),
    (
        "```python\nprint(add(1, 2))\n```\n```python\ndef add(a, b):\n    return a + b\n```",
        "add",
        "def add(a, b):\n    return a + b",
    ),
    (
        "```python\ndef helper(x):\n    return x\n```\nthen\n```python\ndef add(a, b):\n    return helper(a) + b\n```",
        "add",
        "def add(a, b):\n    return helper(a) + b",
    ),
    (
        "```bash\npip install numpy\n```\n```python\ndef add(a, b):\n    return a + b\n```",
        "add",
        "def add(a, b):\n    return a + b",
    ),
    ("```python\ndef add(a, b):\n    return a + b", "add", "def add(a, b):\n    return a + b"),  # unclosed fence
    ("def add(a, b):\n    return a + b\n\nThis function returns the sum.", "add", "def add(a, b):\n    return a + b"),
    ("Sure! Here it is:\ndef add(a, b):\n    return a + b", "add", "def add(a, b):\n    return a + b"),
    (
        "import re\ndef words(s):\n    return re.findall(r'\\w+', s)\nExplanation: uses a regex.",
        "words",
        "import re\ndef words(s):\n    return re.findall(r'\\w+', s)",
    ),
    ("    return a + b\n\nThe body above adds.", "add", "    return a + b"),
    (
        "    total = 0\n    for x in xs:\n        total += x\n    return total\n",
        "sum_all",
        "    total = 0\n    for x in xs:\n        total += x\n    return total",
    ),
    ("```python\nclass Solver:\n    pass\n```", None, "class Solver:\n    pass"),
    ("```python3\ndef add(a,b): return a+b\n```", "add", "def add(a,b): return a+b"),
    (
        "```python\nimport os\n\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```",
        "add",
        "import os\n\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    ),
    (
        "@cache\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "fib",
        "@cache\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    ),
    (
        "from typing import List\n\ndef f(x: List[int]) -> int:\n    return sum(x)\n\nExample: f([1, 2]) returns 3.",
        "f",
        "from typing import List\n\ndef f(x: List[int]) -> int:\n    return sum(x)",
    ),
    ("\treturn x * 2\n", "double", "\treturn x * 2"),
    (
        "```python\ndef add(a, b):\n    return a + b\n```\n\n```python\nassert add(1, 2) == 3\n```",
        "add",
        "def add(a, b):\n    return a + b",
    ),
    ("```python\n\n\ndef add(a, b):\n    return a + b\n\n\n```", "add", "def add(a, b):\n    return a + b"),
    ("```python\ndef helper():\n    return 1\n```\n```python\nx = helper()\n```", "add", "def helper():\n    return 1"),
    ("```python\nresult = [i * i for i in range(3)]\n```", None, "result = [i * i for i in range(3)]"),
    (
        "Solution:\n```python\ndef add(a, b):\n    # sum\n    return a + b\n```",
        "add",
        "def add(a, b):\n    # sum\n    return a + b",
    ),
    (
        "class Stack:\n    def __init__(self):\n        self.items = []\n\nUse it like a list.",
        None,
        "class Stack:\n    def __init__(self):\n        self.items = []",
    ),
]


@pytest.mark.parametrize("completion,entry,expected", CODE_CASES)
def test_extract_code(completion, entry, expected):
    assert extract_code(completion, entry) == expected


@pytest.mark.parametrize(
    "completion",
    ["", "   ", "I cannot write this function.", "```text\nnot code\n```", "The function should add two numbers."],
)
def test_extract_code_none(completion):
    assert extract_code(completion, "add") is None


def test_humaneval_program_assembly():
    prompt = (
        "from typing import List\n\n\ndef helper(x):\n    return x\n\n\n"
        'def total(xs: List[int]) -> int:\n    """Sum."""\n'
    )
    body = "    return sum(helper(x) for x in xs)"
    assert humaneval_program(prompt, body, "total") == prompt + body + "\n"
    unindented = "return sum(xs)"
    assert humaneval_program(prompt, unindented, "total").endswith("    return sum(xs)\n")
    full = "def total(xs):\n    return sum(xs)"
    program = humaneval_program(prompt, full, "total")
    assert program.startswith("from typing import List") and "def helper" in program
    assert program.count("def total") == 1 and program.rstrip().endswith("return sum(xs)")
    compile(program, "<p>", "exec")


def test_code_task_without_code_is_wrong_without_running():
    task = get_task("mbpp")
    item = Item(id="m", question="q", answer=None, data={"tests": ["assert f(1) == 2"], "entry_point": "f"})
    assert task.job(item, "I don't know.") is None
    assert task.is_correct(item, "I don't know.") is False


# --------------------------------------------------------------------------- classify

LABELS = ("math", "code", "reasoning")
CLASSIFY_CASES = [
    ("\\boxed{math}", "math"),
    ("This is a word problem. \\boxed{math}", "math"),
    ("\\boxed{code}", "code"),
    ("\\boxed{\\text{reasoning}}", "reasoning"),
    ("\\boxed{Code}", "code"),
    ("The category is reasoning.", "reasoning"),
    ("Category: math", "math"),
    ("math", "math"),
    ("Reasoning.", "reasoning"),
    ("It asks for a Python function, so \\boxed{code}.", "code"),
    ("\\boxed{math} ... no wait, \\boxed{code}", "code"),
    ("**Category:** code", "code"),
    ("\\boxed{ math }", "math"),
    ("The request asks for code. Answer: code", "code"),
    ("Category is: reasoning", "reasoning"),
    ("\\boxed{\\textbf{code}}", "code"),
    ("`code`", "code"),
    ("**reasoning**", "reasoning"),
    ("\\boxed{MATH}", "math"),
    ("I'd classify this as follows.\nCategory: reasoning", "reasoning"),
    ("The label is code.", "code"),
    ("$\\boxed{math}$", "math"),
    ("\\boxed{reasoning}.", "reasoning"),
]
CLASSIFY_NONE = [
    "",
    "\\boxed{biology}",
    "This request is about numbers and programs.",
    "\\boxed{}",
    "I would say it is math or code.",
    "\\boxed{math, code}",
    "Let me solve it: 2+2=4.",
    "\\boxed{4}",
]


@pytest.mark.parametrize("completion,expected", CLASSIFY_CASES)
def test_classify_extract(completion, expected):
    assert extract_label(completion, LABELS) == expected


@pytest.mark.parametrize("completion", CLASSIFY_NONE)
def test_classify_no_label(completion):
    assert extract_label(completion, LABELS) is None


def test_classify_custom_labels_and_prompt():
    task = get_task("classify", labels=("math", "code", "reasoning", "others"))
    assert task.extract("\\boxed{others}") == "others"
    content = task.messages_for("What is 2+2?")[0]["content"]
    assert "others" in content and "\\boxed{" in content and content.endswith("What is 2+2?")
    item = Item(id="c", question="Write a sort function.", answer="code")
    assert task.reward(item, "\\boxed{code}") == 1.0 and task.reward(item, "\\boxed{math}") == -1.0
    assert task.prompt_for("hi").startswith("Question: ")


def test_prompt_uses_chat_template_when_present():
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert add_generation_prompt and not tokenize
            return "<user>" + messages[0]["content"] + "<assistant>"

    task = get_task("gsm8k")
    item = Item(id="g", question="What is 2+3?", answer="5")
    assert task.prompt(item, Tok()).startswith("<user>Solve") and task.prompt(item, Tok()).endswith("<assistant>")
    plain = task.prompt(item, None)
    assert plain.startswith("Question: ") and plain.endswith("\nAnswer:") and "What is 2+3?" in plain
    assert task.messages(item) == [{"role": "user", "content": task.user_content(item)}]
