// Lint rules for the web console's ES modules (api/console/static/js), run by `make lint`
// and tests/browser/test_js_lint.py; the layout is Prettier's (package.json, width 100).
import js from "@eslint/js";
import globals from "globals";

// Units a reader can hold in mind, as tests/test_code_size.py asks of the Python: every
// line from the first to the last counts, comments and blank lines included.
const MAX_FUNCTION_LINES = 60;
const MAX_CLASS_LINES = 150;

// ESLint measures functions itself (max-lines-per-function) but not classes.
const maxClassLines = {
  meta: {
    type: "suggestion",
    schema: [{ type: "object", properties: { max: { type: "integer" } } }],
    messages: { long: "Class {{name}} has {{lines}} lines; at most {{max}} are allowed." },
  },
  create(context) {
    const { max } = context.options[0];
    const check = (node) => {
      const lines = node.loc.end.line - node.loc.start.line + 1;
      if (lines <= max) return;
      const name = node.id ? node.id.name : "(anonymous)";
      context.report({ node, messageId: "long", data: { name, lines, max } });
    };
    return { ClassDeclaration: check, ClassExpression: check };
  },
};

export default [
  {
    files: ["api/console/static/js/**/*.js", "eslint.config.js"],
    languageOptions: {
      ecmaVersion: 2024,
      sourceType: "module",
      globals: globals.browser,
    },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    plugins: { size: { rules: { "max-class-lines": maxClassLines } } },
    rules: {
      ...js.configs.recommended.rules,
      eqeqeq: ["error", "smart"], // `== null` is the one loose comparison: null or undefined
      curly: ["error", "multi-line"], // a body on its own line has braces
      "no-var": "error",
      "prefer-const": "error",
      "max-lines-per-function": [
        "error",
        { max: MAX_FUNCTION_LINES, skipBlankLines: false, skipComments: false, IIFEs: true },
      ],
      "size/max-class-lines": ["error", { max: MAX_CLASS_LINES }],
    },
  },
];
