export default function App() {
  return (
    <main>
      <h1>Hello from vibebase</h1>
      <p>Edit src/App.jsx, then build with npm run build and deploy dist.</p>
    </main>
  );
}
