import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitepress';

// The site is built from docs/ (`make docs`); the repository is one level up. Pages link freely to
// files of the repository (`../scripts/compose-smoke.sh`): those links leave the site, so they are
// rewritten to DOCS_SOURCE_URL (e.g. https://github.com/<owner>/conveyor/blob/main) when it is set,
// and otherwise rendered as the path in plain code, never as a link that 404s. Links between pages
// stay as they are, and VitePress fails the build on a dead one (ignoreDeadLinks is left off).
const DOCS = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const ROOT = path.dirname(DOCS);
const SOURCE = process.env.DOCS_SOURCE_URL?.replace(/\/$/, '');

interface Token {
  type: string;
  tag: string;
  attrGet(name: string): string | null;
  attrSet(name: string, value: string): void;
  children: Token[] | null;
  content: string;
}

/** The repository path a page's link points to when it leaves docs/, else undefined. */
function outsideSite(href: string, page: string): string | undefined {
  if (/^[a-z][a-z0-9+.-]*:|^#|^\//i.test(href)) return undefined;
  const [file = ''] = href.split('#');
  const target = path.resolve(path.dirname(page), decodeURI(file));
  const inDocs = path.relative(DOCS, target);
  if (!inDocs.startsWith('..')) return undefined;
  return path.relative(ROOT, target) + href.slice(file.length);
}

export default defineConfig({
  title: 'Conveyor',
  description: 'Queue-based image inference: a Koa gateway, BullMQ workers running ONNX models, a drift monitor, MLflow',
  lang: 'en',
  cleanUrls: true,
  lastUpdated: false,
  // Dead links between pages fail the build; only links to a running system (localhost:8080) are exempt.
  ignoreDeadLinks: 'localhostLinks',
  // Nothing of the site is fetched from elsewhere: fonts and search are bundled.
  srcExclude: ['**/node_modules/**', 'README.md'],
  markdown: {
    config(md) {
      // The pages are Markdown: `<id>` or `Bearer <key>` in prose is text, not an HTML tag (Vue would
      // refuse it as an unclosed element). Only HTML comments (the markers of generated tables) stay HTML.
      md.core.ruler.push('conveyor-html-as-text', (state: { tokens: Token[] }) => {
        const isComment = (t: Token) => t.content.trimStart().startsWith('<!--');
        for (const block of state.tokens) {
          if (block.type === 'html_block' && !isComment(block)) block.type = 'text';
          for (const child of block.children ?? []) if (child.type === 'html_inline' && !isComment(child)) child.type = 'text';
        }
      });
      md.core.ruler.push('conveyor-repo-links', (state: { tokens: Token[]; env: { path?: string } }) => {
        const page = state.env.path;
        if (!page) return;
        for (const block of state.tokens) {
          const children = block.children;
          if (!children) continue;
          for (let i = 0; i < children.length; i++) {
            const open = children[i];
            if (open?.type !== 'link_open') continue;
            const href = open.attrGet('href');
            const repoPath = href ? outsideSite(href, page) : undefined;
            if (repoPath === undefined) continue;
            if (SOURCE) {
              open.attrSet('href', `${SOURCE}/${repoPath}`);
              continue;
            }
            // No source URL: drop the link, keep its text.
            const close = children.findIndex((t, j) => j > i && t.type === 'link_close');
            children.splice(close, 1);
            children.splice(i, 1);
            i--;
          }
        }
      });
    },
  },
  themeConfig: {
    search: { provider: 'local' },
    outline: [2, 3],
    nav: [
      { text: 'Getting started', link: '/getting-started' },
      { text: 'API', link: '/api' },
      { text: 'Configuration', link: '/configuration' },
      { text: 'Operations', link: '/operations' },
    ],
    sidebar: [
      {
        text: 'Use',
        items: [
          { text: 'Getting started', link: '/getting-started' },
          { text: 'API', link: '/api' },
          { text: 'Configuration', link: '/configuration' },
          { text: 'Models', link: '/models' },
          { text: 'Your own model', link: '/own-model' },
          { text: "A newcomer's journey, timed", link: '/evidence/newcomer-journey-2026-12-06' },
          { text: 'Python client', link: '/python-client' },
        ],
      },
      {
        text: 'Understand',
        items: [
          { text: 'Architecture', link: '/architecture' },
          { text: 'Design choices', link: '/design-choices' },
          { text: 'Structure of the code', link: '/structure' },
          { text: 'Glossary', link: '/glossary' },
        ],
      },
      {
        text: 'Models and training',
        items: [
          { text: 'Training and the lifecycle', link: '/training' },
          { text: 'Training on AWS', link: '/aws-training' },
          { text: 'A recorded remote run', link: '/evidence/remote-training-run' },
          { text: 'Data validation report', link: '/validation/validation' },
          { text: 'Signed models', link: '/model-trust' },
          { text: 'Replay before promotion', link: '/replay' },
          { text: 'Shadow mode', link: '/shadow' },
        ],
      },
      {
        text: 'Run it',
        items: [
          { text: 'Monitoring and drift', link: '/monitoring' },
          { text: 'Operations and scaling', link: '/operations' },
          { text: 'Runbook', link: '/runbook' },
          { text: 'Redis memory', link: '/redis-memory' },
          { text: 'Callbacks', link: '/callbacks' },
          { text: 'Tracing across the queue', link: '/tracing' },
          { text: 'Idempotent submits', link: '/idempotency' },
          { text: 'Result cache and merged requests', link: '/result-cache' },
          { text: 'Fairness between clients', link: '/fairness' },
          { text: 'Deadlines and cancellation', link: '/deadlines' },
          { text: 'Request priorities', link: '/priorities' },
          { text: 'Isolation between clients', link: '/isolation' },
          { text: 'Retired models', link: '/model-retirement' },
        ],
      },
      {
        text: 'Measure',
        items: [
          { text: 'Performance and load tests', link: '/performance' },
          { text: "The worker's CPU per request", link: '/performance-worker' },
          { text: "The gateway's CPU per request", link: '/performance-gateway' },
          { text: "Redis's time per job", link: '/performance-redis' },
          { text: 'Soak', link: '/soak' },
        ],
      },
      {
        text: 'Contribute',
        items: [
          { text: 'Development', link: '/development' },
          { text: 'Roadmap', link: '/ROADMAP' },
        ],
      },
    ],
  },
});
