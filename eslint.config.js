import js from '@eslint/js';
import security from 'eslint-plugin-security';
import globals from 'globals';
import tseslint from 'typescript-eslint';

const SERVICES = ['gateway', 'inference-worker', 'monitor', 'trainer'];

/**
 * The layout's one rule (STYLE.md, habit 11): services meet only through `shared/` (the contract,
 * the streams, the registry), so a service never imports another and `shared/` imports no service,
 * neither by package name (`@conveyor/monitor`) nor by a relative path into its folder.
 */
function forbidImporting(services, who) {
  const names = services.join('|');
  return {
    'no-restricted-imports': [
      'error',
      {
        patterns: [
          {
            regex: `^@conveyor/(${names})(/|$)|(^|/)(services|${names})(/|$)`,
            message: `${who} may import @conveyor/shared and its own files only: services meet through the contract in shared/.`,
          },
        ],
      },
    ],
  };
}

/**
 * The client (clients/typescript) is what users install: it may import zod, Node's own modules, its
 * own files and the contract's message schemas (`@conveyor/shared/contract/*.contract`, `problem`),
 * which are zod alone — never a service, nor the parts of shared/ that bring sharp, onnxruntime-node
 * or ioredis (the stores, redis, model/). clients/typescript/test/dependencies.test.ts checks the
 * whole import graph.
 */
const clientRules = {
  'no-restricted-imports': [
    'error',
    {
      patterns: [
        {
          regex: '^(?!zod$|node:|\\.{1,2}/|@conveyor/shared/(contract/[a-z-]+\\.contract|problem)$)',
          message:
            'the client may import zod, node:*, its own files and the contract (@conveyor/shared/contract/*.contract, problem) only.',
        },
      ],
    },
  ],
};

const layoutRules = [
  { files: ['shared/**/*.ts'], rules: forbidImporting(SERVICES, 'shared/') },
  { files: ['clients/*/src/**/*.ts'], rules: clientRules },
  ...SERVICES.map((service) => ({
    files: [`services/${service}/**/*.ts`],
    rules: forbidImporting(
      SERVICES.filter((other) => other !== service),
      `services/${service}`,
    ),
  })),
];

/**
 * Type-aware lint (typescript-eslint with the project service) plus eslint-plugin-security, the
 * TypeScript counterpart of the roadmap's bandit. Formatting is Prettier's job, not the linter's.
 */
export default tseslint.config(
  // docs/ is the VitePress site: its own package (docs/package.json) and config, built by `make docs`.
  {
    ignores: [
      '**/dist/**',
      'node_modules/**',
      'data/**',
      'models/**',
      'coverage/**',
      '.venv/**',
      'docs/node_modules/**',
      'docs/.vitepress/**',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.strictTypeChecked,
  security.configs.recommended,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true, allowBoolean: true }],
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' },
      ],
      // Typed arrays indexed in tight numeric loops are the whole point of the image code, and with
      // noUncheckedIndexedAccess every such read is `T | undefined`: `!` is the honest tool there.
      'security/detect-object-injection': 'off',
      '@typescript-eslint/no-non-null-assertion': 'off',
      // File paths come from configuration and CLI arguments only; no request data reaches fs.
      'security/detect-non-literal-fs-filename': 'off',
      '@typescript-eslint/no-confusing-void-expression': 'off',
      'no-console': 'off',
    },
  },
  ...layoutRules,
  {
    // Product code keeps its functions short enough to read at once (issue 20), with no exception.
    files: ['services/*/src/**/*.ts', 'shared/src/**/*.ts'],
    rules: { 'max-lines-per-function': ['error', { max: 80 }] },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: { ...tseslint.configs.disableTypeChecked.languageOptions, globals: globals.node },
  },
  {
    // The gateway's pages run in the browser (plain scripts, no build step).
    files: ['services/gateway/public/**/*.js'],
    languageOptions: { globals: globals.browser, sourceType: 'script' },
  },
  {
    // Tests, benchmarks and dev scripts start processes (redis-server, the services) on purpose.
    files: ['**/test/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts', 'harness/**/*.ts', 'scripts/**/*.ts', 'loadtests/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unused-expressions': 'off',
      'security/detect-child-process': 'off',
    },
  },
);
